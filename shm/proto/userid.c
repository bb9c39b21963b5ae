/*
 * The user-id rule (see shm/proto/userid.h). Bytes >= 0x80 pass untouched:
 * the rule is about lengths and control characters, and whether the bytes are
 * UTF-8 is the JSON layer's business (jansson checks it for JWT and API input).
 */
#include "shm/proto/userid.h"

bool th_userid_valid(const char *s, size_t n)
{
    if (!s || !th_userid_len_ok(n))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}
