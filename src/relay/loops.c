/*
 * The pool of loop threads (loops.h).
 *
 * One mutex guards the run queue, the parked set and the counters; a step
 * never runs under it. Wake-ups: a condition variable for idle threads, an
 * eventfd for the poller (a loop parked with a deadline before the poller's
 * next wake-up, or shutdown), and a second
 * eventfd, "kick", for threads waiting in place on a loop that may park or
 * set kick_ends_wait: it is written when a loop is queued while loops
 * outnumber threads and no thread is idle, so such a thread parks its loop
 * and takes the queued one instead of sleeping on through a poll of up to
 * 5 s (an idle loop; or runs its step at once, which then lets the thread go).
 *
 * The poller waits with epoll: a parked loop's descriptors are registered
 * when it parks and removed when it is queued, so a turn of the poller costs
 * what is ready, not what is parked (with poll(2) every turn handed the
 * kernel every parked descriptor: with 200 idle sources, most of the relay's
 * idle CPU). Only its deadlines are still scanned, in memory.
 */
#include "outboxd/relay/loops.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "outboxd/common/util.h"

/* epoll's data for a parked loop's fd[k] */
typedef struct {
    struct outboxd_loop *l;
    int k;
} park_tag_t;

struct outboxd_loop {
    outboxd_loops_t *pool;
    outboxd_loop_fn fn;
    void *arg;
    outboxd_loop_wait_t w;
    int64_t deadline_ms;   /* parked: when to run it even without events */
    int64_t slice_from_ms; /* when it last got a thread */
    bool ready;            /* parked: the poller saw one of its descriptors */
    bool watched[2];       /* parked: fd[k] is in the pool's epoll set */
    park_tag_t tag[2];
    atomic_bool done;
    struct outboxd_loop *next; /* in the run queue */
};

struct outboxd_loops {
    pthread_mutex_t mu;
    pthread_cond_t work;  /* the queue got a loop, or shutdown */
    pthread_cond_t ended; /* a loop returned DONE */
    outboxd_loop_t *head, *tail;
    atomic_size_t queued;
    outboxd_loop_t **parked;
    size_t n_parked, cap_parked;
    int park_fd;            /* eventfd: wakes the poller */
    int ep;                 /* epoll: park_fd and the parked loops' descriptors */
    int64_t poller_wake_ms; /* when the poller's wait ends (INT64_MAX: none) */
    int kick_fd;            /* eventfd: a loop waits for a thread (see the top) */
    int max_threads;
    int n_threads;
    int n_idle;
    size_t n_loops; /* added and not yet done */
    pthread_t *threads;
    pthread_t poller;
    bool poller_started;
    bool shutdown;
};

static void signal_fd(int fd)
{
    uint64_t one = 1;
    ssize_t w = write(fd, &one, sizeof(one));
    (void)w; /* a full counter is still readable: the wake-up is there */
}

static void drain_fd(int fd)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
}

/* Under mu. */
static void enqueue(outboxd_loops_t *p, outboxd_loop_t *l)
{
    l->next = NULL;
    if (p->tail)
        p->tail->next = l;
    else
        p->head = l;
    p->tail = l;
    atomic_fetch_add(&p->queued, 1);
    if (p->n_idle > 0)
        pthread_cond_signal(&p->work);
    else if (p->n_loops > (size_t)p->n_threads)
        signal_fd(p->kick_fd);
}

/* Takes l's descriptors out of the epoll set. Under mu. */
static void unwatch(outboxd_loops_t *p, outboxd_loop_t *l)
{
    for (int k = 0; k < 2; k++) {
        if (l->watched[k])
            (void)epoll_ctl(p->ep, EPOLL_CTL_DEL, l->w.fd[k], NULL);
        l->watched[k] = false;
    }
}

/* Puts l's descriptors in the epoll set; false (none left in it) when one
 * cannot be: a descriptor another parked loop waits for too (EEXIST: epoll
 * holds a descriptor once; sources never share one), one epoll cannot wait
 * for (EPERM: a regular file), or out of memory or the epoll limit (ENOMEM,
 * ENOSPC). Under mu. */
static bool watch(outboxd_loops_t *p, outboxd_loop_t *l)
{
    for (int k = 0; k < 2; k++) {
        l->watched[k] = false;
        if (l->w.fd[k] < 0)
            continue;
        l->tag[k] = (park_tag_t){.l = l, .k = k};
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &l->tag[k]};
        if (epoll_ctl(p->ep, EPOLL_CTL_ADD, l->w.fd[k], &ev) != 0) {
            unwatch(p, l);
            return false;
        }
        l->watched[k] = true;
    }
    return true;
}

/* epoll's events as poll(2)'s, which the steps read. */
static short as_revents(uint32_t ev)
{
    return (short)(((ev & EPOLLIN) ? POLLIN : 0) | ((ev & EPOLLPRI) ? POLLPRI : 0) |
                   ((ev & EPOLLERR) ? POLLERR : 0) | ((ev & EPOLLHUP) ? POLLHUP : 0));
}

static void *poll_parked(void *arg)
{
    outboxd_loops_t *p = arg;
    pthread_setname_np(pthread_self(), "outboxd-poller");
    struct epoll_event ev[64];
    pthread_mutex_lock(&p->mu);
    while (!p->shutdown) {
        int64_t now = outboxd_now_ms();
        int64_t wake = INT64_MAX;
        for (size_t i = 0; i < p->n_parked; i++)
            if (p->parked[i]->deadline_ms < wake)
                wake = p->parked[i]->deadline_ms;
        int timeout = -1;
        if (wake != INT64_MAX) {
            int64_t left = wake - now;
            timeout = left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
        }
        /* A loop parked meanwhile with a later deadline waits for this
         * wait's end or its descriptors (park() reads this). */
        p->poller_wake_ms = wake;
        pthread_mutex_unlock(&p->mu);
        int n = epoll_wait(p->ep, ev, (int)(sizeof(ev) / sizeof(ev[0])), timeout);
        if (n < 0 && errno != EINTR)
            usleep(10000); /* cannot happen with a valid set; never spin on it */
        pthread_mutex_lock(&p->mu);
        /* Only this thread removes parked loops (and their descriptors from
         * the set), so every event is of a loop still parked. More ready
         * than ev holds: the rest are reported by the next turn. */
        for (int i = 0; i < n; i++) {
            park_tag_t *t = ev[i].data.ptr;
            if (!t) {
                drain_fd(p->park_fd);
                continue;
            }
            t->l->w.revents[t->k] = as_revents(ev[i].events);
            t->l->ready = true;
        }
        now = outboxd_now_ms();
        size_t kept = 0;
        for (size_t i = 0; i < p->n_parked; i++) {
            outboxd_loop_t *l = p->parked[i];
            if (l->ready || now >= l->deadline_ms) {
                unwatch(p, l);
                enqueue(p, l);
            } else {
                p->parked[kept++] = l;
            }
        }
        p->n_parked = kept;
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Hands l to the poller; false when it cannot (then wait in place). Under mu. */
static bool park(outboxd_loops_t *p, outboxd_loop_t *l, int timeout_ms)
{
    if (!p->poller_started)
        return false; /* not crowded yet: outboxd_loops_add starts it */
    if (p->n_parked == p->cap_parked) {
        size_t ncap = p->cap_parked ? p->cap_parked * 2 : 64;
        outboxd_loop_t **np = realloc(p->parked, ncap * sizeof(*np));
        if (!np)
            return false;
        p->parked = np;
        p->cap_parked = ncap;
    }
    l->w.revents[0] = l->w.revents[1] = 0;
    l->ready = false;
    if (!watch(p, l))
        return false;
    l->deadline_ms = outboxd_now_ms() + timeout_ms;
    p->parked[p->n_parked++] = l;
    if (l->deadline_ms < p->poller_wake_ms)
        signal_fd(p->park_fd); /* the poller's wait must end sooner */
    return true;
}

/* Waits for l's descriptors on this thread. With kick, a queued loop wanting
 * the thread ends the wait: for a loop that may park, returns false (l's
 * wait is then not over: timeout_ms is what is left of it, to be waited
 * parked); for one that set kick_ends_wait instead, returns true as after
 * the timeout (revents say whether its descriptors were ready too). */
static bool wait_in_place(outboxd_loops_t *p, outboxd_loop_t *l, int *timeout_ms, bool kick_ok)
{
    struct pollfd pfd[3];
    int n = 0, slot[2] = {-1, -1};
    for (int k = 0; k < 2; k++) {
        l->w.revents[k] = 0;
        if (l->w.fd[k] >= 0) {
            slot[k] = n;
            pfd[n++] = (struct pollfd){.fd = l->w.fd[k], .events = POLLIN};
        }
    }
    int kick = -1;
    if (kick_ok && (l->w.may_park || l->w.kick_ends_wait)) {
        kick = n;
        pfd[n++] = (struct pollfd){.fd = p->kick_fd, .events = POLLIN};
    }
    int64_t t0 = outboxd_now_ms();
    int pr = poll(pfd, (nfds_t)n, *timeout_ms);
    if (pr <= 0)
        return true; /* timed out, or EINTR: taken as a timeout */
    for (int k = 0; k < 2; k++)
        if (slot[k] >= 0)
            l->w.revents[k] = pfd[slot[k]].revents;
    if (kick >= 0 && pfd[kick].revents && !l->w.may_park)
        return true; /* kick_ends_wait: the step runs now */
    if (kick >= 0 && pfd[kick].revents) {
        int64_t left = *timeout_ms - (outboxd_now_ms() - t0);
        *timeout_ms = left > 0 ? (int)left : 0;
        l->w.revents[0] = l->w.revents[1] = 0; /* the wait goes on, parked */
        return false;
    }
    return true;
}

/* Runs l until it ends, yields or parks. */
static void run_loop(outboxd_loops_t *p, outboxd_loop_t *l)
{
    l->slice_from_ms = outboxd_now_ms();
    for (;;) {
        outboxd_loop_rc_t rc = l->fn(l->arg, &l->w);
        if (rc == OUTBOXD_LOOP_DONE) {
            pthread_mutex_lock(&p->mu);
            p->n_loops--;
            atomic_store(&l->done, true);
            pthread_cond_broadcast(&p->ended);
            pthread_mutex_unlock(&p->mu);
            return;
        }
        pthread_mutex_lock(&p->mu);
        if (rc == OUTBOXD_LOOP_YIELD) {
            enqueue(p, l);
            pthread_mutex_unlock(&p->mu);
            return;
        }
        int timeout = l->w.timeout_ms < 0 ? 0 : l->w.timeout_ms;
        bool crowded = p->n_loops > (size_t)p->n_threads;
        if (l->w.may_park && crowded && park(p, l, timeout)) {
            pthread_mutex_unlock(&p->mu);
            return;
        }
        pthread_mutex_unlock(&p->mu);
        int64_t wait_from = outboxd_now_ms();
        bool kick_ok = true;
        while (!wait_in_place(p, l, &timeout, kick_ok)) {
            pthread_mutex_lock(&p->mu);
            bool parked = park(p, l, timeout);
            pthread_mutex_unlock(&p->mu);
            if (parked)
                return;
            /* Cannot park (out of memory, or a descriptor epoll cannot
             * take: watch()): finish the wait here, without the kick (it
             * stays readable until the queue is empty, and parking again
             * would fail again). The loop holds its thread until then. */
            kick_ok = false;
        }
        /* Time spent waiting here is not time spent running (a restart of
         * the slice would let a loop that waits between every message
         * never yield). */
        l->slice_from_ms += outboxd_now_ms() - wait_from;
    }
}

static void *work(void *arg)
{
    outboxd_loops_t *p = arg;
    /* Named so `top -H` and the tests can tell the loop threads apart. */
    pthread_setname_np(pthread_self(), "outboxd-loop");
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->shutdown) {
            p->n_idle++;
            pthread_cond_wait(&p->work, &p->mu);
            p->n_idle--;
        }
        if (!p->head)
            break;
        outboxd_loop_t *l = p->head;
        p->head = l->next;
        if (!p->head) {
            p->tail = NULL;
            drain_fd(p->kick_fd); /* nobody is waiting for a thread now */
        }
        atomic_fetch_sub(&p->queued, 1);
        pthread_mutex_unlock(&p->mu);
        run_loop(p, l);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

outboxd_loops_t *outboxd_loops_new(int max_threads, char *errstr, size_t errstr_size)
{
    if (max_threads < 1)
        max_threads = 1;
    outboxd_loops_t *p = calloc(1, sizeof(*p));
    if (p)
        p->threads = calloc((size_t)max_threads, sizeof(*p->threads));
    if (!p || !p->threads) {
        if (p)
            free(p);
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    p->max_threads = max_threads;
    const char *failed = NULL;
    int err = 0;
    p->kick_fd = p->ep = -1;
    p->park_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->park_fd >= 0)
        p->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->park_fd < 0 || p->kick_fd < 0) {
        failed = "eventfd";
        err = errno;
    } else {
        p->ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event pev = {.events = EPOLLIN, .data.ptr = NULL};
        if (p->ep < 0 || epoll_ctl(p->ep, EPOLL_CTL_ADD, p->park_fd, &pev) != 0) {
            failed = "epoll";
            err = errno;
        }
    }
    if (failed) {
        snprintf(errstr, errstr_size, "%s: %s", failed, strerror(err));
        if (p->park_fd >= 0)
            close(p->park_fd);
        if (p->kick_fd >= 0)
            close(p->kick_fd);
        if (p->ep >= 0)
            close(p->ep);
        free(p->threads);
        free(p);
        return NULL;
    }
    p->poller_wake_ms = INT64_MAX;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->ended, NULL);
    atomic_init(&p->queued, 0);
    return p;
}

int outboxd_loops_add(outboxd_loops_t *p, outboxd_loop_fn fn, void *arg, outboxd_loop_t **handle,
                      char *errstr, size_t errstr_size)
{
    outboxd_loop_t *l = calloc(1, sizeof(*l));
    if (!l) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    l->pool = p;
    l->fn = fn;
    l->arg = arg;
    l->w.fd[0] = l->w.fd[1] = -1;
    atomic_init(&l->done, false);
    pthread_mutex_lock(&p->mu);
    if (p->n_threads < p->max_threads && (size_t)p->n_threads <= p->n_loops) {
        int e = pthread_create(&p->threads[p->n_threads], NULL, work, p);
        if (e && p->n_threads == 0) {
            pthread_mutex_unlock(&p->mu);
            snprintf(errstr, errstr_size, "pthread_create (a loop thread): %s", strerror(e));
            free(l);
            return -1;
        }
        if (!e)
            p->n_threads++;
        /* else: the threads there are run it too */
    }
    if (p->n_loops + 1 > (size_t)p->n_threads && !p->poller_started) {
        /* More loops than threads from now on: they cannot share the
         * threads without the poller. */
        int e = pthread_create(&p->poller, NULL, poll_parked, p);
        if (e) {
            pthread_mutex_unlock(&p->mu);
            snprintf(errstr, errstr_size, "pthread_create (the loops' poller thread): %s",
                     strerror(e));
            free(l);
            return -1;
        }
        p->poller_started = true;
    }
    p->n_loops++;
    /* Published before the loop can run, so its step may use it. */
    *handle = l;
    enqueue(p, l);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

bool outboxd_loop_done(outboxd_loop_t *l)
{
    return atomic_load(&l->done);
}

void outboxd_loop_join(outboxd_loop_t *l)
{
    if (!l)
        return;
    outboxd_loops_t *p = l->pool;
    pthread_mutex_lock(&p->mu);
    while (!atomic_load(&l->done))
        pthread_cond_wait(&p->ended, &p->mu);
    pthread_mutex_unlock(&p->mu);
    free(l);
}

bool outboxd_loop_should_yield(outboxd_loop_t *l)
{
    return atomic_load(&l->pool->queued) > 0 &&
           outboxd_now_ms() - l->slice_from_ms >= OUTBOXD_LOOP_SLICE_MS;
}

bool outboxd_loop_contended(outboxd_loop_t *l)
{
    outboxd_loops_t *p = l->pool;
    if (atomic_load(&p->queued) == 0)
        return false; /* the common case, without the lock */
    /* Queued with a thread idle: that thread takes it now (the same test
     * as enqueue's, which writes the kick only when none is idle). */
    pthread_mutex_lock(&p->mu);
    bool waits = p->head != NULL && p->n_idle == 0;
    pthread_mutex_unlock(&p->mu);
    return waits;
}

int outboxd_loops_threads(outboxd_loops_t *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->n_threads;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void outboxd_loops_destroy(outboxd_loops_t *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->shutdown = true;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    signal_fd(p->park_fd);
    for (int i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    if (p->poller_started)
        pthread_join(p->poller, NULL);
    close(p->ep);
    close(p->park_fd);
    close(p->kick_fd);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->ended);
    free(p->parked);
    free(p->threads);
    free(p);
}
