/* PLACEHOLDER (to be replaced by the registry implementation). */
#include "shm/registry.h"
#include <errno.h>
int th_reg_create(struct th_reg *r, const char *name, uint32_t nslots, char *err, size_t errlen)
{
    return -ENOSYS;
}
int th_reg_attach(struct th_reg *r, const char *name, int writable, char *err, size_t errlen)
{
    return -ENOSYS;
}
