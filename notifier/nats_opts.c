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

natsStatus th_nats_options(natsOptions **opts, const char *list, const char *name)
{
    natsStatus s;
    if ((s = natsOptions_Create(opts)) != NATS_OK ||
        (s = th_nats_set_servers(*opts, list)) != NATS_OK ||
        (s = natsOptions_SetName(*opts, name)) != NATS_OK ||
        (s = natsOptions_UseGlobalMessageDelivery(*opts, true)) != NATS_OK ||
        (s = natsOptions_SetSendAsap(*opts, true)) != NATS_OK ||
        (s = natsOptions_SetMaxReconnect(*opts, -1)) != NATS_OK ||
        (s = natsOptions_SetReconnectWait(*opts, 250)) != NATS_OK ||
        (s = natsOptions_SetTimeout(*opts, 1000)) != NATS_OK ||
        (s = natsOptions_SetPingInterval(*opts, 1000)) != NATS_OK)
        return s;
    return natsOptions_SetMaxPingsOut(*opts, 2);
}
