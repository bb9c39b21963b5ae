/*
 * Test helper (tests/integration/test_worker_limits.py): release every live
 * registry slot of one user from a process that is not the owning worker, as
 * the janitor does when a worker does not answer or a cap claim whose 4001
 * request got lost, and tell nobody. The owner worker must notice by itself
 * (worker/conn.c, wk_conn_tick) and close the connection with 4001.
 *
 * Usage: th_release_slot SHM_NAME USER. Prints how many slots it released;
 * exit 0 when at least one, 1 otherwise (or on error), 2 on bad usage.
 */
#include "shm/registry.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SHM_NAME USER\n", argv[0]);
        return 2;
    }
    struct th_reg r;
    char err[256] = "";
    int rc = th_reg_attach(&r, argv[1], 1, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "th_reg_attach %s: %s\n", argv[1], err);
        return 1;
    }
    struct th_conn_ref refs[TH_MAX_WORKERS];
    int n = th_reg_find_conns(&r, argv[2], strlen(argv[2]), refs, TH_MAX_WORKERS);
    int released = 0;
    for (int i = 0; i < n; i++)
        if (th_reg_release(&r, (struct th_handle){refs[i].slot, refs[i].gen}) == 0)
            released++;
    printf("%d\n", released);
    th_reg_detach(&r);
    return released > 0 ? 0 : 1;
}
