/* PLACEHOLDER (to be replaced by the notifier implementation): waits for SIGTERM. */
#include "notifier/notifier.h"
#include "shm/log.h"
#include <unistd.h>
int th_notifier_main(const struct th_config *cfg, struct th_reg *reg, int api_fd)
{
    th_error("notifier not implemented yet");
    pause();
    return 1;
}
