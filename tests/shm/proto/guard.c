/*
 * Guard-page buffers for the parser tests (see guard.h).
 */
#include "tests/shm/proto/guard.h"

#include <criterion/criterion.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

uint8_t *guard_copy(struct guard *g, const void *src, size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t data_pages = n / page + 1;
    g->map_len = (data_pages + 1) * page;
    g->map = mmap(NULL, g->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert(g->map != MAP_FAILED, "mmap failed");
    uint8_t *guard_page = (uint8_t *)g->map + data_pages * page;
    cr_assert(mprotect(guard_page, page, PROT_NONE) == 0, "mprotect failed");
    g->p = guard_page - n;
    g->n = n;
    if (n)
        memcpy(g->p, src, n);
    return g->p;
}

void guard_free(struct guard *g)
{
    if (g->map)
        munmap(g->map, g->map_len);
    g->map = NULL;
    g->p = NULL;
}
