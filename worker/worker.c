/* PLACEHOLDER (to be replaced by the socket-worker implementation): waits for SIGTERM. */
#include "worker/worker.h"
#include "shm/log.h"
#include <signal.h>
#include <unistd.h>
int th_worker_main(const struct th_config *cfg, struct th_reg *reg, unsigned index, int listen_fd)
{
    th_error("worker not implemented yet");
    pause();
    return 1;
}
