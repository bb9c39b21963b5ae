/*
 * The token keys a group accepts, read from the files its flags name
 * (--jwt-secret-file or TETHER_JWT_SECRET, --jwt-key-file, --jwt-jwks-file)
 * into a shm/proto/jwtkey.h key set. The workers load it at start and again
 * on SIGHUP (a bad new file keeps the keys in force); `tether run` loads it
 * once before anything starts, so a bad file exits 2.
 */
#ifndef TETHER_SHM_RT_JWTKEYS_H
#define TETHER_SHM_RT_JWTKEYS_H

#include "shm/proto/jwt.h"
#include "shm/rt/config.h"

/*
 * Fill ks (which must be empty) from the config's key sources, re-reading
 * the secret file so a rotated secret takes effect. Returns the number of
 * keys, or -errno with a one-line reason naming the file in err; on error ks
 * is empty.
 */
int th_jwt_keys_load(const struct th_config *cfg, struct th_jwt_keys *ks, char *err, size_t errlen);

/* The audience/issuer rules of the config. */
struct th_jwt_rules th_jwt_rules_of(const struct th_config *cfg);

#endif
