/*
 * A bounded pool of threads that run the sources' loops (relay.loop_threads),
 * so the number of threads does not grow with the number of databases.
 *
 * A loop is a step function that runs until it has to wait, then returns:
 *   OUTBOXD_LOOP_WAIT   for its sockets (w->fd, POLLIN) or w->timeout_ms;
 *                       on the next call w->revents says what happened
 *                       (both 0: the timeout ran out);
 *   OUTBOXD_LOOP_YIELD  runnable, but other loops wait for a thread
 *                       (outboxd_loop_should_yield said so): run me later;
 *   OUTBOXD_LOOP_DONE   ended; never called again.
 *
 * While the pool has at least as many threads as loops, every loop has a
 * thread of its own and waits in place (poll on that thread): a thread per
 * loop, as before the pool existed. With more loops than threads, a loop that
 * may park (w->may_park: it holds nothing another loop could be waiting for,
 * such as a producer of the Kafka pool) is handed to the pool's one poller
 * thread, which waits for every parked loop at once and queues the ready ones
 * for the threads; a loop that may not park still waits in place, and so
 * does one whose descriptors the poller's epoll set cannot take (one another
 * parked loop waits for too: loops should not share descriptors). A step
 * that blocks (a Kafka commit, a connection attempt) blocks its thread only.
 *
 * Threads are started as loops are added, up to the limit: a pool of 16 with
 * 3 loops runs 3 threads (and no poller until loops outnumber threads).
 *
 * The limit of sharing: a step that blocks for long (a snapshot, a Kafka
 * commit retried while the broker is away) holds its thread, and while
 * every thread is so held, the loops waiting for one get no turn.
 */
#ifndef OUTBOXD_LOOPS_H
#define OUTBOXD_LOOPS_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    OUTBOXD_LOOP_WAIT,
    OUTBOXD_LOOP_YIELD,
    OUTBOXD_LOOP_DONE,
} outboxd_loop_rc_t;

typedef struct {
    int fd[2];      /* set by the step: descriptors to wait for (POLLIN), -1 for none */
    int timeout_ms; /* set by the step: the longest wait, >= 0 */
    bool may_park;  /* set by the step: the wait may be done by the poller */
    /* Set by the step: a loop queued for a thread ends this wait early (the
     * next step sees both revents 0, as after the timeout). For a loop that
     * may not park but waits by choice and can release what it holds (a
     * batch held open for more) rather than keep the thread meanwhile. The
     * step must then let the thread go (outboxd_loop_contended says when):
     * waiting again, it is woken at once while the loop stays queued. */
    bool kick_ends_wait;
    short revents[2]; /* set by the pool before the next step: what fd[k] showed */
} outboxd_loop_wait_t;

typedef outboxd_loop_rc_t (*outboxd_loop_fn)(void *arg, outboxd_loop_wait_t *w);

typedef struct outboxd_loops outboxd_loops_t;
typedef struct outboxd_loop outboxd_loop_t;

/* A pool of at most max_threads threads (>= 1); none started yet. NULL with
 * errstr when out of memory or descriptors. */
outboxd_loops_t *outboxd_loops_new(int max_threads, char *errstr, size_t errstr_size);

/* Starts running fn(arg) (first call with w zeroed). Sets *handle before the
 * loop can first run (so its step may read it); the handle is the pool's
 * until outboxd_loop_join. Returns 0, or -1 with errstr when no thread could
 * be started for it (a loop thread, or the poller once loops outnumber
 * threads). */
int outboxd_loops_add(outboxd_loops_t *p, outboxd_loop_fn fn, void *arg, outboxd_loop_t **handle,
                      char *errstr, size_t errstr_size);

/* True once the loop returned OUTBOXD_LOOP_DONE (without blocking). */
bool outboxd_loop_done(outboxd_loop_t *l);

/* Waits until the loop returned OUTBOXD_LOOP_DONE and frees the handle. */
void outboxd_loop_join(outboxd_loop_t *l);

/* Called by a loop's own step at a point where it could stop for a while:
 * true when other loops wait for a thread and this one has run its share
 * (OUTBOXD_LOOP_SLICE_MS) since it last got its thread. */
bool outboxd_loop_should_yield(outboxd_loop_t *l);

#define OUTBOXD_LOOP_SLICE_MS 50

/* True when another loop waits for a thread now and no thread is idle to
 * take it, whatever share this one ran: for a loop about to wait on purpose
 * (a batch held open for more), which should rather end what it holds and
 * yield. The same condition writes the kick that ends a kick_ends_wait. */
bool outboxd_loop_contended(outboxd_loop_t *l);

/* Threads started so far (for the log and the tests). */
int outboxd_loops_threads(outboxd_loops_t *p);

/* Stops the threads and frees the pool; every loop must be joined first.
 * Accepts NULL. */
void outboxd_loops_destroy(outboxd_loops_t *p);

#endif
