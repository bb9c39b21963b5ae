/* --nats URL[,URL...] into libnats options (see nats_opts.h for why). */
#include "notifier/nats_opts.h"

#include <poll.h>
#include <stdatomic.h>
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

/* libnats' delivery thread has dispatched a closed subscription's last message. */
static void sub_closed(void *closure)
{
    atomic_fetch_sub_explicit((_Atomic unsigned *)closure, 1, memory_order_release);
}

void th_nats_sub_close(natsSubscription *sub, _Atomic unsigned *open)
{
    atomic_fetch_add_explicit(open, 1, memory_order_relaxed);
    if (natsSubscription_SetOnCompleteCB(sub, sub_closed, (void *)open) != NATS_OK)
        atomic_fetch_sub_explicit(open, 1, memory_order_relaxed); /* closed already (drained) */
    natsSubscription_Destroy(sub);
}

void th_nats_closes_wait(_Atomic unsigned *open, int ms)
{
    for (int i = 0; i < ms && atomic_load_explicit(open, memory_order_acquire); i++)
        poll(NULL, 0, 1);
}
