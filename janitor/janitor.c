/* PLACEHOLDER (to be replaced by the janitor implementation). */
#include "janitor/janitor.h"
#include "shm/log.h"
#include <unistd.h>
int th_janitor_check_config(const struct th_config *cfg, char *err, size_t errlen)
{
    return 0;
}
int th_janitor_main(const struct th_config *cfg, struct th_reg *reg)
{
    th_error("janitor not implemented yet");
    pause();
    return 1;
}
