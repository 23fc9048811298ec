/* Idle-priority spinners that keep the cores of cybn's OpenMP team awake between kernels.

   Why: under OMP_WAIT_POLICY=PASSIVE (cybn's default) an OpenMP thread sleeps as soon as it
   waits, and the Python between two kernels (150-250 us) is long enough for its core to go
   idle. On the 2-vCPU VM this was measured on, waking it again costs 50-140 us per region and
   the work right after the wake runs slower: a 2-thread cnn7 step took 108 ms (median of 5
   fresh processes) against 88 ms with OMP_WAIT_POLICY=ACTIVE. A spinning OpenMP runtime takes
   the cores from other processes (two 2-thread processes side by side: 330 against 170 ms per
   step); a SCHED_IDLE thread runs only when nothing else wants the core. With one spinner per
   team thread, each yielding the core every microsecond (SCHED_IDLE still gets a slice of a
   busy core now and then), the step took 88.8 ms, as with ACTIVE, and two processes side by
   side 169-177 ms against 166-175 ms without spinners.

   cybn_idle_spin_touch(k) asks for k spinners; each spins while its index is below the last
   request until it has spun CYBN_IDLE_SPIN_LINGER_NS (time it was descheduled, i.e. the core
   was busy, does not count), then sleeps on a condition variable until touched again. Linux
   only (SCHED_IDLE); elsewhere the functions do nothing and report 0. The spinners never
   touch data: results are unchanged. */
#ifndef CYBN_IDLE_SPIN_H
#define CYBN_IDLE_SPIN_H

#if defined(__linux__) && defined(__GNUC__)
#  include <pthread.h>
#  include <sched.h>  /* SCHED_IDLE needs _GNU_SOURCE, which Python.h (included first) defines */
#endif
#if defined(__linux__) && defined(__GNUC__) && defined(SCHED_IDLE)
#  define CYBN_IDLE_SPIN_AVAILABLE 1
#  include <stdint.h>
#  include <time.h>
#  include "_common.h"  /* CYBN_PAUSE */

/* Idle time a spinner spins before it sleeps: covers the Python between kernels and the data
   loading between training steps (~1 ms), not a program that has stopped calling kernels. */
#ifndef CYBN_IDLE_SPIN_LINGER_NS
#  define CYBN_IDLE_SPIN_LINGER_NS 5000000LL
#endif
#define CYBN_IDLE_SPIN_MAX 64
/* Whatever the idle time, a spinner sleeps this long after the last kernel (a machine kept
   busy by other work gives it no idle time to count, only the odd slice it yields at once). */
#define CYBN_IDLE_SPIN_MAX_WAIT_NS 1000000000LL
/* A pause loop of ~1 us that took longer than this was descheduled: the core was busy. */
#define CYBN_IDLE_SPIN_GAP_NS 50000LL

static pthread_mutex_t cybn_is_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cybn_is_wake = PTHREAD_COND_INITIALIZER;
static int cybn_is_started;      /* threads created (in this process; reset in a fork child) */
static int cybn_is_wanted;       /* spinners asked for by the last touch */
static int cybn_is_hot;          /* 1 while spinners may spin; 0: they sleep */
static int64_t cybn_is_last_ns;  /* CLOCK_MONOTONIC of the last touch */
static int cybn_is_atfork;
static int cybn_is_refused;      /* the OS refused SCHED_IDLE: no spinners at all */

static inline int64_t cybn_is_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cybn_is_recent(void) {
    return cybn_is_now() - __atomic_load_n(&cybn_is_last_ns, __ATOMIC_SEQ_CST)
           < CYBN_IDLE_SPIN_LINGER_NS;
}

static void *cybn_is_main(void *arg) {
    int index = (int)(intptr_t)arg;
    struct sched_param none = {0};
    if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &none) != 0) {
        /* at normal priority a spinner would take the cores from others: none then */
        __atomic_store_n(&cybn_is_refused, 1, __ATOMIC_SEQ_CST);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&cybn_is_lock);
        while (!(cybn_is_hot && index < cybn_is_wanted))
            pthread_cond_wait(&cybn_is_wake, &cybn_is_lock);
        pthread_mutex_unlock(&cybn_is_lock);
        /* The linger counts the time this spinner actually spun: while the team's threads
           ran on its core it was not scheduled (a gap in its clock), so a kernel longer than
           the linger does not send it to sleep just before the Python that follows. */
        int64_t prev = cybn_is_now(), idle_since = prev;
        while (index < __atomic_load_n(&cybn_is_wanted, __ATOMIC_RELAXED)) {
            /* Yield each microsecond: SCHED_IDLE still gets a slice of a busy core now and
               then (fair share), and a team thread must not wait for it to end. */
            sched_yield();
            for (int i = 0; i < 64; i++)
                CYBN_PAUSE();
            int64_t t = cybn_is_now(), last = __atomic_load_n(&cybn_is_last_ns, __ATOMIC_SEQ_CST);
            if (t - prev > CYBN_IDLE_SPIN_GAP_NS || last > idle_since)
                idle_since = t;
            prev = t;
            if (t - idle_since > CYBN_IDLE_SPIN_LINGER_NS || t - last > CYBN_IDLE_SPIN_MAX_WAIT_NS)
                break;
        }
        pthread_mutex_lock(&cybn_is_lock);
        if (!cybn_is_recent()) {
            /* Clear hot, then look at the clock again: a touch that saw hot == 1 (so did not
               signal) stored its time before, so it is seen here and the spinners go on. */
            __atomic_store_n(&cybn_is_hot, 0, __ATOMIC_SEQ_CST);
            if (cybn_is_recent())
                __atomic_store_n(&cybn_is_hot, 1, __ATOMIC_SEQ_CST);
        }
        pthread_mutex_unlock(&cybn_is_lock);
    }
    return NULL;
}

static void cybn_is_after_fork(void) {
    /* the child has only the forking thread: no spinners, fresh synchronisation */
    pthread_mutex_init(&cybn_is_lock, NULL);
    pthread_cond_init(&cybn_is_wake, NULL);
    cybn_is_started = cybn_is_wanted = cybn_is_hot = 0;
}

/* Ask for k spinners (0 lets them sleep after the linger). Returns the spinners running. */
static int cybn_idle_spin_touch(int k) {
    if (__atomic_load_n(&cybn_is_refused, __ATOMIC_RELAXED))
        return 0;
    if (k > CYBN_IDLE_SPIN_MAX) k = CYBN_IDLE_SPIN_MAX;
    __atomic_store_n(&cybn_is_last_ns, cybn_is_now(), __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&cybn_is_hot, __ATOMIC_SEQ_CST)
            && __atomic_load_n(&cybn_is_wanted, __ATOMIC_RELAXED) == k)
        return cybn_is_started;  /* the common call: spinners already at it */
    pthread_mutex_lock(&cybn_is_lock);
    if (!cybn_is_atfork) {
        pthread_atfork(NULL, NULL, cybn_is_after_fork);
        cybn_is_atfork = 1;
    }
    while (cybn_is_started < k) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        int failed = pthread_create(&t, &attr, cybn_is_main, (void *)(intptr_t)cybn_is_started);
        pthread_attr_destroy(&attr);
        if (failed)
            break;  /* fewer spinners only costs speed */
        cybn_is_started++;
    }
    __atomic_store_n(&cybn_is_wanted, k, __ATOMIC_RELAXED);
    __atomic_store_n(&cybn_is_hot, k > 0, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&cybn_is_wake);
    pthread_mutex_unlock(&cybn_is_lock);
    return cybn_is_started;
}

/* Spinners currently allowed to spin (hot and asked for), for tests and show_config. */
static int cybn_idle_spin_active(void) {
    if (__atomic_load_n(&cybn_is_refused, __ATOMIC_RELAXED))
        return 0;
    return __atomic_load_n(&cybn_is_hot, __ATOMIC_SEQ_CST) ? cybn_is_wanted : 0;
}

#else
#  define CYBN_IDLE_SPIN_AVAILABLE 0
static int cybn_idle_spin_touch(int k) { (void)k; return 0; }
static int cybn_idle_spin_active(void) { return 0; }
#endif

#endif
