/* A switcher thread outside Python: it writes prepared model updates into a libiec61850
 * server at their instant (never before), without the GIL.
 *
 * Why in C (bench/README.md, "switch lateness"): a Python thread that wakes for a switch
 * needs the GIL, and at a boundary on a loaded site the thread holding it may wait for a
 * core behind hundreds of processes waking at once: 1 boundary in 20 was 170-410 ms late
 * at 100 DERs.  This thread needs only the data model lock.  From `lead_ms` before a
 * switch it raises every thread of the process to `nice`, so whichever holds the model
 * lock (libiec61850's own thread, or a Python thread waiting for the GIL) lets go quickly,
 * and gives each its own priority back after; libiec61850's server threads (sw_serve) keep
 * the raised one for `tail_ms` more, so clients reading the switch are answered first.
 *
 * Used through ctypes (relevent/iec61850/switcher.py); no Python API here.  libiec61850 is
 * reached through function pointers handed over at creation, from the library the ctypes
 * bindings loaded (it is loaded RTLD_LOCAL, so there is nothing to link against).
 *
 * Besides switches at an instant, the caller pushes updates to write as soon as possible
 * (sw_push: the states its Python threads apply), so that no Python thread ever holds the
 * model lock: one that holds it may wait for the GIL or a core with it, and clients' reads
 * wait behind it (bench/README.md).  Pushed updates are written in the order pushed, and
 * before any switch that was armed after them; a thread that already holds the model lock
 * (a libiec61850 handler) writes those still queued itself with sw_drain first.
 *
 * Contract with the caller: every call is thread-safe (a mutex inside); the caller
 * serialises them with sw_free.  The thread takes due switches only with the model lock
 * held, so under that lock a switch is either still armed (sw_cancel drops it) or written.
 * Without it, a switch sw_cancel no longer finds was taken and is written before anything
 * pushed afterwards.  Applied switches are reported through sw_collect (and an eventfd).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum kind { K_FLOAT = 0, K_INT = 1, K_BOOL = 2, K_TIME = 3, K_TIME_EXACT = 4, K_QUALITY = 5, K_STRING = 6 };

typedef struct {
    void (*lock)(void *server);
    void (*unlock)(void *server);
    void (*update_float)(void *server, void *attr, float value);
    void (*update_int32)(void *server, void *attr, int32_t value);
    void (*update_bool)(void *server, void *attr, bool value);
    void (*update_utc_time)(void *server, void *attr, uint64_t ms);
    void (*update_quality)(void *server, void *attr, uint16_t quality);
    void (*update_value)(void *server, void *attr, void *mms_value);
    void *(*new_utc_time)(uint64_t ms);
    void (*delete_value)(void *mms_value);
    void (*update_string)(void *server, void *attr, const char *value);
} iec_functions;

typedef struct {
    int kind;
    void *attr;
    double number;   /* float */
    int64_t integer; /* int, bool, time, quality */
    char *text;      /* string */
} update;

typedef struct {
    int64_t key;
    int64_t at_ms;
    int n_first;     /* updates[0 .. n_first) go first (the outputs), then the rest */
    int n;
    update *updates;
} armed_switch;

typedef struct {
    int64_t key, at_ms, woke_ns, locked_ns, outputs_ns, done_ns;
    int64_t batch;   /* switches applied together */
} applied_switch;

#define BOOSTED_MAX 256   /* threads of this process raised for a switch */
#define SERVE_MAX 16      /* server threads kept raised after a switch */

typedef struct {
    void *server;
    iec_functions f;
    int nice, lead_ms;
    int notify_fd;   /* an eventfd: +1 after every batch applied */
    bool can_boost;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    armed_switch *armed;
    int n_armed, cap_armed;
    armed_switch *pushed;   /* to write at once, oldest first (key and at_ms unused) */
    int n_pushed, cap_pushed;
    applied_switch *applied;
    int n_applied, cap_applied;
    int64_t lost;    /* applied records dropped because nobody collected them */
    struct { pid_t tid; int nice; } boosted[BOOSTED_MAX];  /* switcher thread only */
    int n_boosted;
    /* libiec61850's server threads keep the switch's priority for tail_ms after it, so a
     * client reading the switch is served first (set by sw_serve; under mu). */
    pid_t serve[SERVE_MAX];
    int n_serve, tail_ms;
    struct { pid_t tid; int nice; } tail[SERVE_MAX];     /* switcher thread only */
    int n_tail;
    int64_t tail_until_ns;
} switcher;

#define APPLIED_MAX 4096

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void free_updates(update *u, int n) {
    for (int i = 0; i < n; i++) free(u[i].text);
    free(u);
}

static update *copy_updates(int n, const int *kinds, void *const *attrs, const double *numbers,
                            const int64_t *integers, const char *const *texts) {
    update *u = calloc((size_t)(n ? n : 1), sizeof *u);
    if (!u) return NULL;
    for (int i = 0; i < n; i++) {
        u[i].kind = kinds[i];
        u[i].attr = attrs[i];
        u[i].number = numbers[i];
        u[i].integer = integers[i];
        u[i].text = texts[i] ? strdup(texts[i]) : NULL;
    }
    return u;
}

/* A free slot at the end of `*list` (grown as needed), or NULL out of memory. */
static armed_switch *append_slot(armed_switch **list, int *n, int *cap) {
    if (*n == *cap) {
        int grown_cap = *cap ? 2 * *cap : 64;
        armed_switch *grown = realloc(*list, (size_t)grown_cap * sizeof *grown);
        if (!grown) return NULL;
        *list = grown;
        *cap = grown_cap;
    }
    return &(*list)[(*n)++];
}

/* Every other thread of this process to `nice` (the switch is near), remembering each one's
 * own priority (libiec61850's server thread may have one of its own), or back to it. */
static void boost_all(switcher *s) {
    DIR *dir = opendir("/proc/self/task");
    if (!dir) return;
    pid_t me = (pid_t)syscall(SYS_gettid);
    struct dirent *e;
    s->n_boosted = 0;
    while ((e = readdir(dir)) != NULL && s->n_boosted < BOOSTED_MAX) {
        pid_t tid = (pid_t)atoi(e->d_name);
        if (e->d_name[0] == '.' || tid == me) continue;
        errno = 0;
        int own = getpriority(PRIO_PROCESS, (id_t)tid);
        if (errno != 0 || own <= s->nice) continue;  /* gone, or already as high */
        if (setpriority(PRIO_PROCESS, (id_t)tid, s->nice) == 0) {
            s->boosted[s->n_boosted].tid = tid;
            s->boosted[s->n_boosted].nice = own;
            s->n_boosted++;
        }
    }
    closedir(dir);
}

static void unboost_all(switcher *s) {
    for (int i = 0; i < s->n_boosted; i++)
        setpriority(PRIO_PROCESS, (id_t)s->boosted[i].tid, s->boosted[i].nice);
    s->n_boosted = 0;
}

static void start_tail(switcher *s) {  /* mu held */
    s->n_tail = 0;
    for (int i = 0; i < s->n_serve; i++) {
        errno = 0;
        int own = getpriority(PRIO_PROCESS, (id_t)s->serve[i]);
        if (errno != 0 || own <= s->nice) continue;
        if (setpriority(PRIO_PROCESS, (id_t)s->serve[i], s->nice) == 0) {
            s->tail[s->n_tail].tid = s->serve[i];
            s->tail[s->n_tail].nice = own;
            s->n_tail++;
        }
    }
    s->tail_until_ns = now_ns() + (int64_t)s->tail_ms * 1000000;
}

static void end_tail(switcher *s) {  /* mu held */
    for (int i = 0; i < s->n_tail; i++)
        setpriority(PRIO_PROCESS, (id_t)s->tail[i].tid, s->tail[i].nice);
    s->n_tail = 0;
    s->tail_until_ns = 0;
}

static void apply(switcher *s, const update *u) {
    switch (u->kind) {
    case K_FLOAT: s->f.update_float(s->server, u->attr, (float)u->number); break;
    case K_INT: s->f.update_int32(s->server, u->attr, (int32_t)u->integer); break;
    case K_BOOL: s->f.update_bool(s->server, u->attr, u->integer != 0); break;
    case K_TIME: s->f.update_utc_time(s->server, u->attr, (uint64_t)u->integer); break;
    case K_TIME_EXACT: {  /* replaces the whole value, a finer fraction than ms included */
        void *v = s->f.new_utc_time((uint64_t)u->integer);
        if (v) { s->f.update_value(s->server, u->attr, v); s->f.delete_value(v); }
        break;
    }
    case K_QUALITY: s->f.update_quality(s->server, u->attr, (uint16_t)u->integer); break;
    case K_STRING: s->f.update_string(s->server, u->attr, u->text ? u->text : ""); break;
    }
}

static int first_due(switcher *s, int64_t *at) {  /* mu held; index of the earliest, or -1 */
    int best = -1;
    for (int i = 0; i < s->n_armed; i++)
        if (best < 0 || s->armed[i].at_ms < s->armed[best].at_ms) best = i;
    if (best >= 0) *at = s->armed[best].at_ms;
    return best;
}

static void wait_until_ns(switcher *s, int64_t deadline_ns) {  /* mu held */
    struct timespec ts = {deadline_ns / 1000000000, deadline_ns % 1000000000};
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
}

static void record(switcher *s, const applied_switch *a) {  /* mu held */
    if (s->n_applied == APPLIED_MAX) { s->lost++; return; }
    if (s->n_applied == s->cap_applied) {
        int cap = s->cap_applied ? 2 * s->cap_applied : 64;
        applied_switch *grown = realloc(s->applied, (size_t)cap * sizeof *grown);
        if (!grown) { s->lost++; return; }
        s->applied = grown;
        s->cap_applied = cap;
    }
    s->applied[s->n_applied++] = *a;
}

/* Model lock held: the pushed updates, taken from the queue (mu held). */
static armed_switch *take_pushed(switcher *s, int *n) {
    armed_switch *taken = s->pushed;
    *n = s->n_pushed;
    s->pushed = NULL;
    s->n_pushed = s->cap_pushed = 0;
    return taken;
}

/* Model lock held: the outputs (updates[0 .. n_first)) of every item, or the rest. */
static void write_all(switcher *s, const armed_switch *list, int n, bool outputs) {
    for (int d = 0; d < n; d++) {
        int from = outputs ? 0 : list[d].n_first, to = outputs ? list[d].n_first : list[d].n;
        for (int i = from; i < to; i++) apply(s, &list[d].updates[i]);
    }
}

static void free_list(armed_switch *list, int n) {
    for (int d = 0; d < n; d++) free_updates(list[d].updates, list[d].n);
    free(list);
}

/* mu not held: writes what is pushed and the switches due; returns how many switches
 * (not pushed updates) it applied, or -1 out of memory. */
static int switch_due(switcher *s, int64_t woke_ns) {
    s->f.lock(s->server);
    int64_t locked_ns = now_ns();
    pthread_mutex_lock(&s->mu);
    /* Re-read under the model lock: the caller may have cancelled or re-armed meanwhile. */
    int64_t now_ms = locked_ns / 1000000;
    int n_due = 0, n_pushed = 0;
    armed_switch *due = malloc((size_t)(s->n_armed ? s->n_armed : 1) * sizeof *due);
    if (!due) {
        pthread_mutex_unlock(&s->mu);
        s->f.unlock(s->server);
        return -1;
    }
    /* Written first: what is pushed for a controller was pushed before its switch was armed
     * (the caller cancels or records a switch before it pushes for that controller again). */
    armed_switch *pushed = take_pushed(s, &n_pushed);
    for (int i = 0; i < s->n_armed;) {
        if (s->armed[i].at_ms <= now_ms) {
            due[n_due++] = s->armed[i];
            s->armed[i] = s->armed[--s->n_armed];
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    /* Every output first: they are the switch.  Pushed ones before the switches' in both
     * passes, so an attribute gets its values in the order they were given. */
    write_all(s, pushed, n_pushed, true);
    write_all(s, due, n_due, true);
    int64_t outputs_ns = now_ns();
    write_all(s, pushed, n_pushed, false);
    write_all(s, due, n_due, false);
    int64_t done_ns = now_ns();
    free_list(pushed, n_pushed);
    pthread_mutex_lock(&s->mu);
    for (int d = 0; d < n_due; d++) {
        applied_switch a = {due[d].key, due[d].at_ms, woke_ns, locked_ns, outputs_ns, done_ns, n_due};
        record(s, &a);
        free_updates(due[d].updates, due[d].n);
    }
    pthread_mutex_unlock(&s->mu);
    s->f.unlock(s->server);
    free(due);
    return n_due;
}

static void notify(switcher *s) {
    if (s->notify_fd < 0) return;
    uint64_t one = 1;
    ssize_t ignored = write(s->notify_fd, &one, sizeof one);
    (void)ignored;  /* an eventfd write fails only on overflow: already signalled */
}

static void *run(void *arg) {
    switcher *s = arg;
    bool boosted = false;
    if (s->can_boost) setpriority(PRIO_PROCESS, 0, s->nice);
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        int64_t at_ms = 0;
        bool armed = first_due(s, &at_ms) >= 0;
        int64_t now = now_ns(), at_ns = at_ms * 1000000, boost_ns = at_ns - (int64_t)s->lead_ms * 1000000;
        bool tail = s->tail_until_ns != 0;
        if (tail && (now >= s->tail_until_ns || (armed && now >= boost_ns))) {
            end_tail(s);  /* over, or the next boost (which records priorities) is due */
            continue;
        }
        if (boosted && (!armed || now < boost_ns)) {  /* cancelled, or moved later */
            pthread_mutex_unlock(&s->mu);
            unboost_all(s);
            pthread_mutex_lock(&s->mu);
            boosted = false;
            continue;
        }
        if (s->n_pushed > 0) {  /* at once, without raising anyone: nothing waits on an instant */
            pthread_mutex_unlock(&s->mu);
            int applied = switch_due(s, now);
            if (applied < 0) {
                struct timespec ms = {0, 1000000};
                nanosleep(&ms, NULL);
            } else if (applied > 0) {
                notify(s);
            }
            pthread_mutex_lock(&s->mu);
            if (applied > 0 && s->can_boost && s->tail_ms > 0) start_tail(s);
        } else if (!armed) {
            if (tail)
                wait_until_ns(s, s->tail_until_ns);
            else
                pthread_cond_wait(&s->cv, &s->mu);
        } else if (now < boost_ns) {
            /* then re-read: an arm or cancel may change the instant */
            wait_until_ns(s, tail && s->tail_until_ns < boost_ns ? s->tail_until_ns : boost_ns);
        } else if (s->can_boost && !boosted) {
            pthread_mutex_unlock(&s->mu);
            boost_all(s);
            pthread_mutex_lock(&s->mu);
            boosted = true;
        } else if (now < at_ns) {
            wait_until_ns(s, at_ns);
        } else {
            pthread_mutex_unlock(&s->mu);
            int applied = switch_due(s, now);
            if (applied < 0) {  /* out of memory: try again in a moment, not in a busy loop */
                struct timespec ms = {0, 1000000};
                nanosleep(&ms, NULL);
            } else if (applied > 0) {
                notify(s);
            }
            if (boosted) unboost_all(s);
            boosted = false;
            pthread_mutex_lock(&s->mu);
            if (applied > 0 && s->can_boost && s->tail_ms > 0) start_tail(s);
        }
    }
    if (s->tail_until_ns != 0) end_tail(s);
    pthread_mutex_unlock(&s->mu);
    if (boosted) unboost_all(s);
    return NULL;
}

/* -- the interface (ctypes) ------------------------------------------------------------- */

/* Returns NULL if the thread cannot start.  `can_boost` is set when `nice` is allowed.
 * `notify_fd` (-1 for none) gets an eventfd increment after every batch of switches. */
void *sw_create(void *server, const iec_functions *f, int nice, int lead_ms, int notify_fd, int *can_boost) {
    switcher *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->server = server;
    s->f = *f;
    s->nice = nice;
    s->lead_ms = lead_ms;
    s->notify_fd = notify_fd;
    errno = 0;
    int own = getpriority(PRIO_PROCESS, 0);  /* the calling thread's */
    /* Allowed only with CAP_SYS_NICE or a high enough RLIMIT_NICE: try it on this thread. */
    s->can_boost = nice < own && setpriority(PRIO_PROCESS, 0, nice) == 0;
    if (s->can_boost) setpriority(PRIO_PROCESS, 0, own);  /* raising is always allowed */
    *can_boost = s->can_boost;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, run, s) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* Arms `n` updates (the first `n_first` are the outputs) for `at_ms`, replacing whatever
 * is still armed under `key`.  Returns 0, or -1 out of memory. */
int sw_arm(void *handle, int64_t key, int64_t at_ms, int n, int n_first, const int *kinds,
           void *const *attrs, const double *numbers, const int64_t *integers, const char *const *texts) {
    switcher *s = handle;
    update *u = copy_updates(n, kinds, attrs, numbers, integers, texts);
    if (!u) return -1;
    pthread_mutex_lock(&s->mu);
    armed_switch *slot = NULL;
    for (int i = 0; i < s->n_armed; i++)
        if (s->armed[i].key == key) { slot = &s->armed[i]; free_updates(slot->updates, slot->n); break; }
    if (!slot) slot = append_slot(&s->armed, &s->n_armed, &s->cap_armed);
    if (!slot) { pthread_mutex_unlock(&s->mu); free_updates(u, n); return -1; }
    *slot = (armed_switch){key, at_ms, n_first, n, u};
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Queues `n` updates (the first `n_first` are outputs) to write as soon as the thread has
 * the model lock, after everything pushed before.  Returns 0, or -1 out of memory. */
int sw_push(void *handle, int n, int n_first, const int *kinds, void *const *attrs, const double *numbers,
            const int64_t *integers, const char *const *texts) {
    switcher *s = handle;
    update *u = copy_updates(n, kinds, attrs, numbers, integers, texts);
    if (!u) return -1;
    pthread_mutex_lock(&s->mu);
    armed_switch *slot = append_slot(&s->pushed, &s->n_pushed, &s->cap_pushed);
    if (!slot) { pthread_mutex_unlock(&s->mu); free_updates(u, n); return -1; }
    *slot = (armed_switch){-1, 0, n_first, n, u};
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Model lock held (a libiec61850 handler): writes, in this thread, what is still pushed,
 * so what the caller writes next lands after it.  Returns how many pushes it wrote. */
int sw_drain(void *handle) {
    switcher *s = handle;
    int n = 0;
    pthread_mutex_lock(&s->mu);
    armed_switch *pushed = take_pushed(s, &n);
    pthread_mutex_unlock(&s->mu);
    write_all(s, pushed, n, true);
    write_all(s, pushed, n, false);
    free_list(pushed, n);
    return n;
}

/* The server threads to keep at the switch priority for `tail_ms` after each switch. */
void sw_serve(void *handle, const int *tids, int n, int tail_ms) {
    switcher *s = handle;
    pthread_mutex_lock(&s->mu);
    s->n_serve = n < SERVE_MAX ? n : SERVE_MAX;
    for (int i = 0; i < s->n_serve; i++) s->serve[i] = (pid_t)tids[i];
    s->tail_ms = tail_ms;
    pthread_mutex_unlock(&s->mu);
}

/* 1 if a switch was armed under `key` (it will not happen), else 0: none was, or the
 * thread took it (with the model lock held by the caller, that means it is written). */
int sw_cancel(void *handle, int64_t key) {
    switcher *s = handle;
    int found = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_armed; i++) {
        if (s->armed[i].key == key) {
            free_updates(s->armed[i].updates, s->armed[i].n);
            s->armed[i] = s->armed[--s->n_armed];
            found = 1;
            pthread_cond_signal(&s->cv);
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

/* Moves up to `max` applied records into `out` (oldest first); returns how many.
 * `lost` gets the count of records dropped since the last call (nobody collected them). */
int sw_collect(void *handle, applied_switch *out, int max, int64_t *lost) {
    switcher *s = handle;
    pthread_mutex_lock(&s->mu);
    int n = s->n_applied < max ? s->n_applied : max;
    memcpy(out, s->applied, (size_t)n * sizeof *out);
    memmove(s->applied, s->applied + n, (size_t)(s->n_applied - n) * sizeof *out);
    s->n_applied -= n;
    *lost = s->lost;
    s->lost = 0;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Stops the thread and waits for it (never with the model lock held: it may be waiting for
 * it).  The other calls stay safe until sw_free (what is pushed then is never written). */
void sw_stop(void *handle) {
    switcher *s = handle;
    pthread_mutex_lock(&s->mu);
    bool running = !s->stop;
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (running) pthread_join(s->thread, NULL);
}

/* After sw_stop, when no other call can run. */
void sw_free(void *handle) {
    switcher *s = handle;
    free_list(s->armed, s->n_armed);
    free_list(s->pushed, s->n_pushed);
    free(s->applied);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
