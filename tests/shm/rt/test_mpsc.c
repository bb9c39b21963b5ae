/*
 * shm/rt/mpsc.h under contention: producer threads push numbered nodes
 * while the consumer takes and frees each batch at once, as route_nats'
 * loop does. Checks that every node arrives exactly once and each
 * producer's nodes arrive in the order it pushed them, and that a wake is
 * asked for whenever the consumer may have emptied the stack. Its real
 * target is the ownership rule: run under ThreadSanitizer or
 * AddressSanitizer (tools/test does both), a push that touched its node
 * after publishing it (the route_nats bug this header replaced) is
 * reported as a race or a use-after-free. A plain program (exit 0 = pass),
 * not Criterion, which cannot start under TSan.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "shm/rt/mpsc.h"

#define PRODUCERS 4
#define PER_PRODUCER 200000

struct item {
    struct th_mpsc_node link;
    int producer, n;
};

static _Atomic(struct th_mpsc_node *) head;
static atomic_int wakes, done_producers;

static void *producer(void *arg)
{
    int id = (int)(long)arg;
    for (int i = 0; i < PER_PRODUCER; i++) {
        struct item *it = malloc(sizeof(*it));
        if (!it)
            abort();
        it->producer = id;
        it->n = i;
        if (th_mpsc_push(&head, &it->link))
            atomic_fetch_add(&wakes, 1);
    }
    atomic_fetch_add(&done_producers, 1);
    return NULL;
}

int main(void)
{
    pthread_t t[PRODUCERS];
    int next[PRODUCERS] = {0};
    long got = 0, takes = 0, empty_takes = 0;
    atomic_init(&head, NULL);
    for (long i = 0; i < PRODUCERS; i++)
        if (pthread_create(&t[i], NULL, producer, (void *)i) != 0) {
            perror("pthread_create");
            return 1;
        }
    for (;;) {
        int finished = atomic_load(&done_producers) == PRODUCERS; /* before the take */
        struct th_mpsc_node *n = th_mpsc_take(&head);
        takes++;
        if (!n)
            empty_takes++;
        while (n) {
            struct item *it = (struct item *)n;
            n = n->next;
            if (it->producer < 0 || it->producer >= PRODUCERS || it->n != next[it->producer]) {
                fprintf(stderr, "FAIL: producer %d item %d arrived, expected %d\n", it->producer,
                        it->n,
                        it->producer >= 0 && it->producer < PRODUCERS ? next[it->producer] : -1);
                return 1;
            }
            next[it->producer]++;
            got++;
            free(it); /* at once: the producer may still be inside th_mpsc_push */
        }
        if (finished)
            break;
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(t[i], NULL);
    if (got != (long)PRODUCERS * PER_PRODUCER || th_mpsc_take(&head) != NULL) {
        fprintf(stderr, "FAIL: %ld of %d items arrived\n", got, PRODUCERS * PER_PRODUCER);
        return 1;
    }
    /*
     * Every non-empty take empties the stack, so the next push must ask for
     * a wake, and only a push onto an empty stack may: with the stack empty
     * at the end, wakes and takes that found something are equal.
     */
    long found = takes - empty_takes;
    if (atomic_load(&wakes) != found) {
        fprintf(stderr, "FAIL: %d wakes for %ld non-empty takes\n", atomic_load(&wakes), found);
        return 1;
    }
    printf("ok: %ld items in %ld takes (%ld empty), %d wakes\n", got, takes, empty_takes,
           atomic_load(&wakes));
    return 0;
}
