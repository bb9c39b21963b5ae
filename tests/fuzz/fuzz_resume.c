/*
 * Fuzz target for the resume parameters of the upgrade (shm/proto/resume_req.h).
 *
 * The input is a query string. A reference written here another way
 * (strtoull with errno, a plain scan for the first "since" and "epoch"
 * keys) must agree with th_resume_parse on accept/refuse and on the values;
 * an accepted epoch points inside the input, is 1 to 64 bytes of
 * [0-9A-Za-z_-]; a refusal names a reason that can go into a JSON string
 * as is.
 */
#include "tests/fuzz/fuzz.h"
#include "shm/proto/resume_req.h"

#include <ctype.h>
#include <errno.h>

/* First value of key in q (split at '&', key up to '='); 1 found. */
static int ref_param(const char *q, size_t n, const char *key, const char **v, size_t *vn)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i <= n;) {
        size_t e = i;
        while (e < n && q[e] != '&')
            e++;
        size_t eq = i;
        while (eq < e && q[eq] != '=')
            eq++;
        if (eq - i == kl && !memcmp(q + i, key, kl)) {
            *v = eq < e ? q + eq + 1 : q + e;
            *vn = eq < e ? e - eq - 1 : 0;
            return 1;
        }
        i = e + 1;
    }
    return 0;
}

static int ref_u64(const char *p, size_t n, uint64_t *out)
{
    char buf[32];
    if (n == 0 || n > 20)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)p[i]))
            return 0;
    memcpy(buf, p, n);
    buf[n] = 0;
    errno = 0;
    unsigned long long v = strtoull(buf, NULL, 10);
    if (errno == ERANGE)
        return 0;
    *out = v;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = fuzz_dup(data, size);
    const char *q = (const char *)copy;
    struct th_str query = {q, size};
    struct th_resume_req r;
    const char *why = NULL;
    int rc = th_resume_parse(&query, &r, &why);

    const char *sv, *ev;
    size_t sn = 0, en = 0;
    uint64_t since = 0;
    int has_s = ref_param(q, size, "since", &sv, &sn);
    int has_e = ref_param(q, size, "epoch", &ev, &en) && en > 0;
    int ok = 1;
    if (has_s && !ref_u64(sv, sn, &since))
        ok = 0;
    if (has_e && en > TH_EPOCH_MAX)
        ok = 0;
    for (size_t i = 0; has_e && i < en; i++)
        if (!isalnum((unsigned char)ev[i]) && ev[i] != '-' && ev[i] != '_')
            ok = 0;
    if (has_e && !has_s)
        ok = 0;

    FUZZ_CHECK((rc == 0) == ok, "parser %d, reference %s", rc, ok ? "accepts" : "refuses");
    if (rc < 0) {
        FUZZ_CHECK(rc == -EINVAL && why && *why, "a refusal without a reason");
        FUZZ_CHECK(!strpbrk(why, "\"\\"), "reason not JSON-safe: %s", why);
    } else {
        FUZZ_CHECK(r.want == has_s, "want %d, since present %d", r.want, has_s);
        FUZZ_CHECK(!has_s || r.since == since, "since %llu, reference %llu",
                   (unsigned long long)r.since, (unsigned long long)since);
        FUZZ_CHECK((r.epoch != NULL) == has_e, "epoch presence");
        if (r.epoch) {
            FUZZ_CHECK(r.epoch >= q && r.epoch + r.epoch_len <= q + size,
                       "epoch outside the input");
            FUZZ_CHECK(r.epoch_len == en && !memcmp(r.epoch, ev, en), "epoch differs");
        }
    }
    free(copy);
    return 0;
}
