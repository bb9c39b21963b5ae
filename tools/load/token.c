/*
 * HS256 JWTs for the load clients. Each client needs its own token (one user
 * per connection), so signing is a few microseconds of libcrypto HMAC and
 * base64 per connection. tether's own signer is not linked on purpose: the
 * load tool then checks tether's verifier against an independent signer.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tools/load/load.h"

/* base64url without padding; returns the length written or -1. */
static int b64url(const unsigned char *in, size_t n, char *out, size_t cap)
{
    if (cap < 4 * ((n + 2) / 3) + 1)
        return -1;
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    for (int i = 0; i < len; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[len] = 0;
    return len;
}

int load_sign_token(const char *sub, const uint8_t *secret, size_t secret_len, char *out,
                    size_t cap)
{
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char claims[160];
    int cl = snprintf(claims, sizeof claims, "{\"sub\":\"%s\",\"exp\":%lld}", sub,
                      (long long)time(NULL) + 86400);
    if (cl < 0 || (size_t)cl >= sizeof claims)
        return -1;
    int a = b64url((const unsigned char *)hdr, sizeof hdr - 1, out, cap);
    if (a < 0 || (size_t)a + 1 >= cap)
        return -1;
    out[a++] = '.';
    int b = b64url((const unsigned char *)claims, (size_t)cl, out + a, cap - (size_t)a);
    if (b < 0)
        return -1;
    a += b;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), secret, (int)secret_len, (const unsigned char *)out, (size_t)a, mac,
              &maclen) ||
        (size_t)a + 1 >= cap)
        return -1;
    out[a++] = '.';
    int c = b64url(mac, maclen, out + a, cap - (size_t)a);
    return c < 0 ? -1 : a + c;
}
