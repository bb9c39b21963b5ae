/*
 * Unit tests of notifier/notify_fast.c: the common shapes are taken and
 * render the frame jansson's path renders, byte for byte; every shape it
 * must leave to jansson (escapes, reals, "-0", repeated keys, deep nesting,
 * errors of every kind, bad field values) is declined, so the general
 * parser's answer and error message stand.
 */
#include "notifier/notify_fast.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define NOW (1700000000ull * 1000000000ull)

/* The frame jansson's path renders for body (which it must accept). */
static char *slow_frame(const char *body, size_t *len)
{
    json_t *root;
    struct th_notify n;
    char err[256];
    cr_assert_eq(th_api_parse_notify(body, strlen(body), &root, &n, err, sizeof(err)), 0, "%s: %s",
                 body, err);
    char *f = th_api_render_frame(&n, "id-1", 4, NOW, len);
    json_decref(root);
    return f;
}

static void taken(const char *body)
{
    struct th_buf scratch = {0};
    struct th_notify n;
    cr_assert_eq(th_api_fast_notify(body, strlen(body), &scratch, &n), 1, "declined: %s", body);
    size_t fl, sl;
    char *f = th_api_render_frame(&n, "id-1", 4, NOW, &fl);
    char *sf = slow_frame(body, &sl);
    cr_assert(fl == sl && !memcmp(f, sf, fl), "%s\n fast %s\n slow %s", body, f, sf);
    free(f);
    free(sf);
    th_buf_free(&scratch);
}

static void declined(const char *body)
{
    struct th_buf scratch = {0};
    struct th_notify n;
    cr_assert_eq(th_api_fast_notify(body, strlen(body), &scratch, &n), 0, "taken: %s", body);
    th_buf_free(&scratch);
}

Test(notify_fast, common_shapes_render_as_jansson)
{
    taken("{\"user_id\":\"u1\",\"type\":\"meal_log.completed\"}");
    taken("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{}}");
    taken("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":null,\"id\":null,\"ttl_s\":null}");
    taken("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"kcal\":640,\"neg\":-12,\"z\":0}}");
    taken(" { \"data\" : { \"a\" : [ 1 , 2 , { \"b\" : [ ] } ] , \"c\" : true , \"d\" : false ,"
          " \"e\" : null } ,\n\t\"user_id\" : \"u-2\" , \"type\" : \"x.y\" , \"id\" : \"n-42\" "
          "}\r\n");
    taken("{\"user_id\":\"\xc3\xa9l\xc3\xa8ve\",\"type\":\"t\",\"data\":{\"txt\":\"caf\xc3\xa9 "
          "\xe2\x82\xac\"}}");
    taken("{\"user_id\":\"u1\",\"type\":\"t\",\"ttl_s\":0,\"extra\":{\"ignored\":[1,\"x\"]}}");
    taken("{\"user_id\":\"u1\",\"type\":\"t\",\"ttl_s\":4294967295,\"data\":{\"n\":"
          "123456789012345678}}");
    taken("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"a\":{\"a\":{\"a\":1}},\"b\":{\"a\":2}}}");
}

Test(notify_fast, fields_come_out)
{
    struct th_buf scratch = {0};
    struct th_notify n;
    const char *b =
        "{\"user_id\":\"u7\",\"type\":\"tt\",\"id\":\"abc\",\"ttl_s\":30,\"data\":{ \"k\" : 1 }}";
    cr_assert_eq(th_api_fast_notify(b, strlen(b), &scratch, &n), 1);
    cr_assert(n.ulen == 2 && !memcmp(n.user, "u7", 2) && n.tlen == 2 && n.idlen == 3 &&
              !memcmp(n.id, "abc", 3) && n.has_ttl && n.ttl_s == 30);
    cr_assert(n.data == NULL && n.data_jlen == 7 && !memcmp(n.data_json, "{\"k\":1}", 7));
    th_buf_free(&scratch);
}

Test(notify_fast, unusual_shapes_left_to_jansson)
{
    declined("{\"user_id\":\"u\\u0031\",\"type\":\"t\"}"); /* escape */
    declined("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"s\":\"a\\nb\"}}");
    declined("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"r\":1.5}}"); /* real */
    declined("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"r\":1e3}}");
    declined("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"r\":-0}}");
    declined("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"r\":1234567890123456789}}");
    declined("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"a\":1,\"a\":2}}"); /* repeated key */
    declined("{\"user_id\":\"u1\",\"type\":\"t\",\"user_id\":\"u2\"}");
    declined("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
             "1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}"); /* deeper than 32 */
    char many[400] = "{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{";
    for (int i = 0; i < 17; i++)
        sprintf(many + strlen(many), "%s\"k%d\":%d", i ? "," : "", i, i);
    strcat(many, "}}");
    declined(many); /* more keys than are checked for repeats */
}

Test(notify_fast, errors_left_to_jansson)
{
    const char *bad[] = {
        "",
        "{",
        "[]",
        "null",
        "{}",
        "{\"type\":\"t\"}",
        "{\"user_id\":\"u1\"}",
        "{\"user_id\":\"u1\",\"type\":\"\"}",
        "{\"user_id\":\"\",\"type\":\"t\"}",
        "{\"user_id\":1,\"type\":\"t\"}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"data\":[]}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"data\":\"x\"}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"id\":\"\"}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"id\":5}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"id\":\"a\x7f\"}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"ttl_s\":-1}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"ttl_s\":4294967296}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"ttl_s\":\"5\"}",
        "{\"user_id\":\"u1\",\"type\":\"t\"} x",
        "{\"user_id\":\"u1\",\"type\":\"t\",}",
        "{\"user_id\":\"u1\" \"type\":\"t\"}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"a\":01}}",
        "{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"a\":tru}}",
        "{\"user_id\":\"\xc3\",\"type\":\"t\"}",                                 /* invalid UTF-8 */
        "{\"user_id\":\"u1\",\"type\":\"t\",\"data\":{\"a\":\"\xed\xa0\x80\"}}", /* surrogate */
        "{\"user_id\":\"u\x01\",\"type\":\"t\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        declined(bad[i]);
    char id[200];
    snprintf(id, sizeof(id), "{\"user_id\":\"u1\",\"type\":\"t\",\"id\":\"%0129d\"}", 0);
    declined(id); /* 129 bytes */
}

Test(notify_fast, batch_all_or_nothing)
{
    struct th_buf scratch = {0};
    struct th_notify items[4];
    size_t n;
    const char *b = "[{\"user_id\":\"a\",\"type\":\"t\",\"data\":{\"x\":1}}, "
                    "{\"user_id\":\"b\",\"type\":\"t\"},"
                    "{\"user_id\":\"c\",\"type\":\"t\",\"data\":{ \"y\" : [ 2 ] }}]";
    cr_assert_eq(th_api_fast_batch(b, strlen(b), &scratch, items, 4, &n), 1);
    cr_assert_eq(n, 3);
    cr_assert(items[0].data_jlen == 7 && !memcmp(items[0].data_json, "{\"x\":1}", 7));
    cr_assert(items[1].data_json == NULL && items[1].ulen == 1 && items[1].user[0] == 'b');
    cr_assert(items[2].data_jlen == 9 && !memcmp(items[2].data_json, "{\"y\":[2]}", 9));
    cr_assert_eq(th_api_fast_batch("[]", 2, &scratch, items, 4, &n), 1);
    cr_assert_eq(n, 0);
    const char *mixed = "[{\"user_id\":\"a\",\"type\":\"t\"},{\"user_id\":\"b\",\"type\":\"t\","
                        "\"data\":{\"r\":0.5}}]";
    cr_assert_eq(th_api_fast_batch(mixed, strlen(mixed), &scratch, items, 4, &n), 0);
    const char *over = "[{\"user_id\":\"a\",\"type\":\"t\"},{\"user_id\":\"b\",\"type\":\"t\"}]";
    cr_assert_eq(th_api_fast_batch(over, strlen(over), &scratch, items, 1, &n), 0); /* over max */
    cr_assert_eq(th_api_fast_batch("[{}", 3, &scratch, items, 4, &n), 0);
    th_buf_free(&scratch);
}
