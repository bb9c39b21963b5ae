/* --nats URL[,URL...] into libnats options (see nats_opts.h for why). */
#include "notifier/nats_opts.h"

#include <string.h>

#define MAX_SERVERS 32
#define LIST_MAX 4096

natsStatus th_nats_set_servers(natsOptions *opts, const char *list)
{
    char buf[LIST_MAX];
    const char *servers[MAX_SERVERS];
    int n = 0;
    size_t len = strlen(list);
    if (len == 0 || len >= sizeof(buf))
        return NATS_INVALID_ARG;
    memcpy(buf, list, len + 1);
    for (char *p = buf, *end; p && *p; p = end) {
        end = strchr(p, ',');
        if (end)
            *end++ = 0;
        while (*p == ' ')
            p++;
        for (size_t k = strlen(p); k && p[k - 1] == ' '; k--)
            p[k - 1] = 0;
        if (!*p)
            continue;
        if (n == MAX_SERVERS)
            return NATS_INVALID_ARG;
        servers[n++] = p;
    }
    return n ? natsOptions_SetServers(opts, servers, n) : NATS_INVALID_ARG;
}
