/*
 * Who may open a socket: the token keys (shm/rt/jwtkeys.h), loaded at start
 * and swapped on SIGHUP without touching live connections (a bad new file
 * keeps the keys in force), and the Origin allow-list of browser upgrades.
 */
#include "worker/wk.h"
#include "shm/rt/jwtkeys.h"
#include "shm/rt/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int wk_auth_setup(struct worker *w)
{
    char err[512];
    w->jwt_keys = calloc(1, sizeof(*w->jwt_keys));
    if (!w->jwt_keys)
        return -ENOMEM;
    int n = th_jwt_keys_load(w->cfg, w->jwt_keys, err, sizeof(err));
    if (n < 0) {
        th_error("token keys: %s", err);
        return n;
    }
    w->jwt_rules = th_jwt_rules_of(w->cfg);
    th_debug("token keys: %d loaded", n);
    return 0;
}

void wk_auth_reload(struct worker *w)
{
    char err[512];
    struct th_jwt_keys *ks = calloc(1, sizeof(*ks));
    int n = ks ? th_jwt_keys_load(w->cfg, ks, err, sizeof(err)) : -1;
    if (n < 0) {
        th_error("token keys not reloaded, keeping the %zu in force: %s", w->jwt_keys->n,
                 ks ? err : "out of memory");
        free(ks);
        return;
    }
    th_jwt_keys_free(w->jwt_keys);
    free(w->jwt_keys);
    w->jwt_keys = ks;
    th_info("token keys reloaded: %d key(s)", n);
}

void wk_auth_shutdown(struct worker *w)
{
    if (w->jwt_keys)
        th_jwt_keys_free(w->jwt_keys);
    free(w->jwt_keys);
    w->jwt_keys = NULL;
}

/*
 * Does one list entry admit origin? An entry is an exact origin, or a
 * pattern: a star label then a domain ("*.example.com"), optionally after a
 * scheme ("https:" "//" then the star): the origin's host must end in that
 * domain with at least one label before it, and its scheme match when given.
 */
static int entry_admits(const char *e, size_t en, const char *o, size_t on)
{
    const char *star = memchr(e, '*', en);
    if (!star)
        return en == on && strncasecmp(e, o, on) == 0;
    size_t pre = (size_t)(star - e), suf = en - pre - 1;
    if (suf < 2 || star[1] != '.' || memchr(star + 1, '*', suf))
        return 0;
    const char *host = o;
    size_t hn = on;
    const char *sep = memmem(o, on, "://", 3);
    if (sep) {
        host = sep + 3;
        hn = on - (size_t)(host - o);
    }
    if (pre && (pre != (size_t)(host - o) || strncasecmp(e, o, pre) != 0))
        return 0;
    return hn > suf && strncasecmp(host + hn - suf, star + 1, suf) == 0 &&
           memchr(host, '/', hn) == NULL;
}

int wk_origin_allowed(const char *list, const char *origin, size_t on)
{
    if (!list || !list[0])
        return 1;
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        size_t n = (size_t)(end - p);
        while (n && p[n - 1] == ' ')
            n--;
        if (n && entry_admits(p, n, origin, on))
            return 1;
        p = end;
    }
    return 0;
}
