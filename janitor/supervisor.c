/* PLACEHOLDER (to be replaced by the supervisor implementation). */
#include "janitor/supervisor.h"
#include <stdio.h>
int th_supervisor_run(const struct th_config *cfg)
{
    fprintf(stderr, "tether run: supervisor not implemented yet\n");
    return 1;
}
