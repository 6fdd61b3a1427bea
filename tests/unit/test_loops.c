/*
 * The pool of loop threads (loops.h): more loops than threads all make
 * progress (waits on descriptors and timeouts handed to the poller, busy
 * loops taking turns), a loop that may not park keeps its thread, and a loop
 * added while every thread waits in place gets one at once. The poller's
 * epoll set: more loops ready at once than one turn takes, and loops waiting
 * for the same descriptor (which epoll holds once: the second waits in place).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "outboxd/common/util.h"
#include "outboxd/relay/loops.h"

typedef struct {
    int fd;         /* eventfd the loop waits for, -1: none */
    int timeout_ms; /* each wait */
    bool may_park;
    bool kick_ends_wait;
    int want;         /* wake-ups (or timeouts) before DONE */
    atomic_int got;   /* wake-ups by the descriptor */
    atomic_int timed; /* wake-ups by the timeout */
    atomic_int calls;
    bool busy;         /* never waits: runs until told to yield */
    atomic_int *token; /* non-NULL: hold it (1) from the first step to DONE */
    bool token_wait;   /* instead: wait (up to 5 s, blocking) to take it */
    atomic_bool ended;
    atomic_int bad; /* what the step found wrong (asserted by the test's thread) */
    outboxd_loop_t *self;
} fake_t;

static outboxd_loop_rc_t fake_step(void *arg, outboxd_loop_wait_t *w)
{
    fake_t *f = arg;
    if (f->token && f->token_wait) {
        /* Blocks its thread, as a source waiting for a pool producer does. */
        bool taken = false;
        for (int i = 0; i < 5000 && !taken; i++) {
            int free_ = 0;
            taken = atomic_compare_exchange_strong(f->token, &free_, 1);
            if (!taken)
                usleep(1000);
        }
        /* Asserted by the test's own thread (cmocka's asserts jump). */
        if (taken)
            atomic_store(f->token, 0);
        atomic_store(&f->ended, taken);
        return OUTBOXD_LOOP_DONE;
    }
    if (f->token && atomic_load(&f->calls) == 0)
        if (atomic_exchange(f->token, 1) != 0)
            atomic_fetch_add(&f->bad, 1);
    if (atomic_fetch_add(&f->calls, 1) > 0 && !f->busy) {
        if (f->fd >= 0 && (w->revents[0] & POLLIN)) {
            uint64_t v;
            if (read(f->fd, &v, sizeof(v)) != sizeof(v))
                atomic_fetch_add(&f->bad, 1);
            atomic_fetch_add(&f->got, 1);
        } else {
            if (w->revents[0] != 0)
                atomic_fetch_add(&f->bad, 1);
            atomic_fetch_add(&f->timed, 1);
        }
    }
    if (f->busy) {
        /* A slice: run until another loop waits for the thread. */
        if (atomic_load(&f->calls) > f->want)
            return OUTBOXD_LOOP_DONE;
        while (!outboxd_loop_should_yield(f->self))
            usleep(1000);
        return OUTBOXD_LOOP_YIELD;
    }
    if (atomic_load(&f->got) + atomic_load(&f->timed) >= f->want) {
        if (f->token)
            atomic_store(f->token, 0);
        atomic_store(&f->ended, true);
        return OUTBOXD_LOOP_DONE;
    }
    w->fd[0] = f->fd;
    w->fd[1] = -1;
    w->timeout_ms = f->timeout_ms;
    w->may_park = f->may_park;
    w->kick_ends_wait = f->kick_ends_wait;
    return OUTBOXD_LOOP_WAIT;
}

static outboxd_loop_t *add(outboxd_loops_t *p, fake_t *f)
{
    char err[128];
    assert_int_equal(outboxd_loops_add(p, fake_step, f, &f->self, err, sizeof(err)), 0);
    assert_non_null(f->self);
    return f->self;
}

static outboxd_loops_t *new_pool(int threads)
{
    char err[128];
    outboxd_loops_t *p = outboxd_loops_new(threads, err, sizeof(err));
    if (!p)
        fail_msg("outboxd_loops_new: %s", err);
    return p;
}

/* f waits (may park) want times for fd (-1: none) or timeout_ms. */
static void waiter(fake_t *f, int fd, int timeout_ms, int want)
{
    memset(f, 0, sizeof(*f));
    f->fd = fd;
    f->timeout_ms = timeout_ms;
    f->may_park = true;
    f->want = want;
}

/* Waits (at most 10 s) until f made its first step (and now waits). */
static void await_first_step(fake_t *f)
{
    for (int i = 0; i < 10000 && atomic_load(&f->calls) < 1; i++)
        usleep(1000);
}

static void join(outboxd_loop_t *l, fake_t *f)
{
    outboxd_loop_join(l);
    assert_int_equal(atomic_load(&f->bad), 0);
}

static void wake(int fd)
{
    uint64_t one = 1;
    assert_int_equal(write(fd, &one, sizeof(one)), sizeof(one));
}

/* Waits (at most 10 s) until f saw n wake-ups by its descriptor. */
static void await_got(fake_t *f, int n)
{
    for (int i = 0; i < 10000 && atomic_load(&f->got) < n; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&f->got), n);
}

/* Five loops on one thread, each woken by its descriptor in turn, three times. */
static void parked_loops_wake_by_descriptor(void **state)
{
    (void)state;
    outboxd_loops_t *p = new_pool(1);
    fake_t f[5];
    outboxd_loop_t *l[5];
    for (int i = 0; i < 5; i++) {
        memset(&f[i], 0, sizeof(f[i]));
        f[i].fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        f[i].timeout_ms = 60000;
        f[i].may_park = true;
        f[i].want = 3;
        l[i] = add(p, &f[i]);
    }
    assert_int_equal(outboxd_loops_threads(p), 1);
    for (int round = 1; round <= 3; round++) {
        for (int i = 4; i >= 0; i--) {
            wake(f[i].fd);
            await_got(&f[i], round);
        }
    }
    for (int i = 0; i < 5; i++) {
        join(l[i], &f[i]);
        assert_int_equal(atomic_load(&f[i].timed), 0);
        close(f[i].fd);
    }
    outboxd_loops_destroy(p);
}

/* Timeouts of parked loops run out and wake them, with no descriptor at all. */
static void parked_loops_time_out(void **state)
{
    (void)state;
    outboxd_loops_t *p = new_pool(1);
    fake_t f[3];
    outboxd_loop_t *l[3];
    int64_t t0 = outboxd_now_ms();
    for (int i = 0; i < 3; i++) {
        memset(&f[i], 0, sizeof(f[i]));
        f[i].fd = -1;
        f[i].timeout_ms = 20;
        f[i].may_park = true;
        f[i].want = 10;
        l[i] = add(p, &f[i]);
    }
    for (int i = 0; i < 3; i++) {
        join(l[i], &f[i]);
        assert_int_equal(atomic_load(&f[i].timed), 10);
    }
    /* Ten waits of 20 ms each: not shorter than that. */
    assert_true(outboxd_now_ms() - t0 >= 200);
    outboxd_loops_destroy(p);
}

/* Two loops that never wait share one thread: each yields its slice. */
static void busy_loops_take_turns(void **state)
{
    (void)state;
    outboxd_loops_t *p = new_pool(1);
    fake_t f[2];
    outboxd_loop_t *l[2];
    for (int i = 0; i < 2; i++) {
        memset(&f[i], 0, sizeof(f[i]));
        f[i].busy = true;
        f[i].want = 3; /* three slices, then done */
        l[i] = add(p, &f[i]);
    }
    for (int i = 0; i < 2; i++)
        join(l[i], &f[i]);
    assert_int_equal(atomic_load(&f[0].calls), 4);
    assert_int_equal(atomic_load(&f[1].calls), 4);
    outboxd_loops_destroy(p);
}

/* A loop that may not park keeps the thread through its waits: it holds a
 * token (as a source holds a pool producer while its batch is open) that the
 * other loop blocks its thread to take. Parked, the holder would never get
 * the one thread back and the taker would give up after 5 s. */
static void unparkable_loop_keeps_its_thread(void **state)
{
    (void)state;
    outboxd_loops_t *p = new_pool(1);
    atomic_int token = 0;
    fake_t a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    a.fd = b.fd = -1;
    a.timeout_ms = 5;
    a.want = 20;
    a.may_park = false;
    a.token = &token;
    b.token = &token;
    b.token_wait = true;
    outboxd_loop_t *la = add(p, &a);
    outboxd_loop_t *lb = add(p, &b);
    join(la, &a);
    join(lb, &b);
    assert_int_equal(atomic_load(&a.timed), 20);
    assert_true(atomic_load(&b.ended)); /* it took the token: the holder was not left parked */
    outboxd_loops_destroy(p);
}

/* Two threads, each waiting in place (10 s) on a loop that may park; a third
 * loop added then runs at once: a thread parks its loop to take it. */
static void added_loop_gets_a_thread_at_once(void **state)
{
    (void)state;
    outboxd_loops_t *p = new_pool(2);
    fake_t f[3];
    outboxd_loop_t *l[3];
    for (int i = 0; i < 3; i++) {
        memset(&f[i], 0, sizeof(f[i]));
        f[i].fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        f[i].timeout_ms = 10000;
        f[i].may_park = true;
        f[i].want = 1;
    }
    l[0] = add(p, &f[0]);
    l[1] = add(p, &f[1]);
    /* Both ran their first step: their threads wait in place now (or are
     * about to; the kick stays readable until the queue is empty). */
    for (int i = 0; i < 10000 && (atomic_load(&f[0].calls) < 1 || atomic_load(&f[1].calls) < 1);
         i++)
        usleep(1000);
    assert_int_equal(atomic_load(&f[0].calls), 1);
    assert_int_equal(atomic_load(&f[1].calls), 1);
    int64_t t0 = outboxd_now_ms();
    l[2] = add(p, &f[2]);
    wake(f[2].fd);
    await_got(&f[2], 1);
    join(l[2], &f[2]);
    /* The in-place waits last 10 s; the kick ends one at once. */
    assert_true(outboxd_now_ms() - t0 < 5000);
    assert_int_equal(outboxd_loops_threads(p), 2);
    /* The parked one still wakes by its descriptor. */
    for (int i = 0; i < 2; i++) {
        wake(f[i].fd);
        join(l[i], &f[i]);
        assert_int_equal(atomic_load(&f[i].got), 1);
    }
    for (int i = 0; i < 3; i++)
        close(f[i].fd);
    outboxd_loops_destroy(p);
}

/* One thread, whose loop may not park but waits by choice (10 s) with
 * kick_ends_wait, as a source holding a batch open behind a backlog does: a
 * loop added then ends that wait at once (the step runs as after a timeout,
 * here ending the holder), and the added loop gets the thread. Without it the
 * added loop would wait the 10 s out. */
static void kick_ends_a_chosen_wait(void **state)
{
    (void)state;
    outboxd_loops_t *p = new_pool(1);
    fake_t a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    a.fd = b.fd = -1;
    a.timeout_ms = 10000;
    a.want = 1;
    a.may_park = false;
    a.kick_ends_wait = true;
    b.timeout_ms = 1;
    b.want = 1;
    b.may_park = true;
    outboxd_loop_t *la = add(p, &a);
    for (int i = 0; i < 10000 && atomic_load(&a.calls) < 1; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&a.calls), 1);
    usleep(20000); /* a is in its poll now, or about to be (the kick stays readable) */
    int64_t t0 = outboxd_now_ms();
    outboxd_loop_t *lb = add(p, &b);
    join(lb, &b);
    assert_true(outboxd_now_ms() - t0 < 5000);
    join(la, &a);
    assert_int_equal(atomic_load(&a.timed), 1); /* ended as by its timeout: revents 0 */
    assert_true(atomic_load(&b.ended));
    outboxd_loops_destroy(p);
}

/* Fewer loops than the limit: one thread each, started as loops come. */
static void threads_grow_with_loops_up_to_the_limit(void **state)
{
    (void)state;
    outboxd_loops_t *p = new_pool(16);
    assert_int_equal(outboxd_loops_threads(p), 0);
    fake_t f[3];
    outboxd_loop_t *l[3];
    for (int i = 0; i < 3; i++) {
        memset(&f[i], 0, sizeof(f[i]));
        f[i].fd = -1;
        f[i].timeout_ms = 10;
        f[i].may_park = true;
        f[i].want = 5;
        l[i] = add(p, &f[i]);
    }
    assert_int_equal(outboxd_loops_threads(p), 3);
    for (int i = 0; i < 3; i++) {
        join(l[i], &f[i]);
        assert_int_equal(atomic_load(&f[i].timed), 5);
    }
    outboxd_loops_destroy(p);
}

/* 300 parked loops on 2 threads, every descriptor ready at once: more than
 * one turn of the poller takes (64 events), so the rest must come in the
 * next turns, and none may wait its 60 s timeout out. */
static void many_ready_at_once_all_wake(void **state)
{
    (void)state;
    enum { N = 300 };
    outboxd_loops_t *p = new_pool(2);
    fake_t *f = calloc(N, sizeof(*f));
    outboxd_loop_t **l = calloc(N, sizeof(*l));
    assert_non_null(f);
    assert_non_null(l);
    for (int i = 0; i < N; i++) {
        waiter(&f[i], eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), 60000, 1);
        assert_true(f[i].fd >= 0);
        l[i] = add(p, &f[i]);
    }
    /* Let them all make their first step and park. */
    for (int i = 0; i < N; i++)
        await_first_step(&f[i]);
    int64_t t0 = outboxd_now_ms();
    for (int i = 0; i < N; i++)
        wake(f[i].fd);
    for (int i = 0; i < N; i++) {
        join(l[i], &f[i]);
        assert_int_equal(atomic_load(&f[i].got), 1);
        close(f[i].fd);
    }
    assert_true(outboxd_now_ms() - t0 < 30000);
    free(f);
    free(l);
    outboxd_loops_destroy(p);
}

/* Three loops waiting for one pipe on one thread. epoll takes a descriptor
 * once, so the second to park cannot: it must wait in place instead of being
 * parked without its descriptor (it would then wake only by its 10 s
 * timeout). 24 bytes written: each loop reads its 8. */
static void loops_sharing_a_descriptor_all_wake(void **state)
{
    (void)state;
    outboxd_loops_t *p = new_pool(1);
    int pipefd[2];
    assert_int_equal(pipe2(pipefd, O_NONBLOCK | O_CLOEXEC), 0);
    fake_t f[3];
    outboxd_loop_t *l[3];
    for (int i = 0; i < 3; i++) {
        waiter(&f[i], pipefd[0], 10000, 1);
        l[i] = add(p, &f[i]);
    }
    await_first_step(&f[0]);
    await_first_step(&f[1]);
    usleep(20000); /* the first two wait now: one parked, one in place */
    int64_t t0 = outboxd_now_ms();
    char bytes[24] = {0};
    assert_int_equal(write(pipefd[1], bytes, sizeof(bytes)), sizeof(bytes));
    for (int i = 0; i < 3; i++) {
        join(l[i], &f[i]);
        assert_int_equal(atomic_load(&f[i].got), 1);
        assert_int_equal(atomic_load(&f[i].timed), 0);
    }
    assert_true(outboxd_now_ms() - t0 < 5000);
    close(pipefd[0]);
    close(pipefd[1]);
    outboxd_loops_destroy(p);
}

/* The poller sleeps until the earliest deadline of what is parked; a loop
 * parked later with an earlier one must end that sleep. One thread: a waits
 * 60 s for its descriptor, parked; b parks with 50 ms waits and must see its
 * three timeouts long before a's 60 s (a park that did not wake the poller
 * would leave b waiting for them). */
static void earlier_deadline_wakes_the_poller(void **state)
{
    (void)state;
    outboxd_loops_t *p = new_pool(1);
    fake_t a, b;
    waiter(&a, eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), 60000, 1);
    waiter(&b, -1, 50, 3);
    outboxd_loop_t *la = add(p, &a);
    await_first_step(&a);
    usleep(20000); /* a waits now (in place; it parks when b comes) */
    int64_t t0 = outboxd_now_ms();
    outboxd_loop_t *lb = add(p, &b);
    join(lb, &b);
    assert_int_equal(atomic_load(&b.timed), 3);
    assert_true(outboxd_now_ms() - t0 < 5000);
    wake(a.fd);
    join(la, &a);
    assert_int_equal(atomic_load(&a.got), 1);
    close(a.fd);
    outboxd_loops_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parked_loops_wake_by_descriptor),
        cmocka_unit_test(parked_loops_time_out),
        cmocka_unit_test(busy_loops_take_turns),
        cmocka_unit_test(unparkable_loop_keeps_its_thread),
        cmocka_unit_test(added_loop_gets_a_thread_at_once),
        cmocka_unit_test(kick_ends_a_chosen_wait),
        cmocka_unit_test(threads_grow_with_loops_up_to_the_limit),
        cmocka_unit_test(many_ready_at_once_all_wake),
        cmocka_unit_test(loops_sharing_a_descriptor_all_wake),
        cmocka_unit_test(earlier_deadline_wakes_the_poller),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
