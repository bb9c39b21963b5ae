/*
 * A lock-free intrusive stack for many producer threads and one consumer
 * (the route_nats event queue: libnats' threads push, the io_uring loop
 * takes). Producers push one node at a time; the consumer takes the whole
 * stack in one exchange and gets it back oldest first.
 *
 * Ownership: a node belongs to its producer until the exchange in
 * th_mpsc_push succeeds, and to the consumer from that instant, which may
 * take and free it before the producer's next instruction. So push never
 * touches the node after publishing it: whether the stack was empty (the
 * producer's cue to wake the consumer) comes from its local copy of the old
 * head. No ABA problem: the consumer never pops a single node, it swaps
 * the head for NULL. A producer that dies halfway (a thread cannot die
 * alone in a process) needs no thought here.
 */
#ifndef TETHER_SHM_RT_MPSC_H
#define TETHER_SHM_RT_MPSC_H

#include <stdatomic.h>
#include <stddef.h>

struct th_mpsc_node {
    struct th_mpsc_node *next;
};

/* Push n; returns 1 when the stack was empty before (wake the consumer). */
static inline int th_mpsc_push(_Atomic(struct th_mpsc_node *) *head, struct th_mpsc_node *n)
{
    struct th_mpsc_node *old = atomic_load_explicit(head, memory_order_relaxed);
    do
        n->next = old;
    while (!atomic_compare_exchange_weak_explicit(head, &old, n, memory_order_release,
                                                  memory_order_relaxed));
    return old == NULL; /* never n->next: n may be freed by now */
}

/* Take everything pushed so far, oldest first (consumer only). */
static inline struct th_mpsc_node *th_mpsc_take(_Atomic(struct th_mpsc_node *) *head)
{
    struct th_mpsc_node *n = atomic_exchange_explicit(head, NULL, memory_order_acquire);
    struct th_mpsc_node *prev = NULL;
    while (n) { /* newest first -> oldest first */
        struct th_mpsc_node *next = n->next;
        n->next = prev;
        prev = n;
        n = next;
    }
    return prev;
}

#endif
