/*
 * Fault-injection PKCS#11 module for tests: forwards every call to a real module and, as told by a
 * control file, fails every call with CKR_DEVICE_ERROR or delays the crypto calls.
 *
 *   FAULTSHIM_MODULE   real module to forward to (default /usr/lib/softhsm/libsofthsm2.so)
 *   FAULTSHIM_CONTROL  control file: "ok" | "device_error" | "delay <ms>"  (missing file = ok)
 *
 * The control file is re-read at most every 20 ms (one clock_gettime per call otherwise), so the
 * per-call overhead is a few nanoseconds. Every argument of every PKCS#11 function is an integer
 * or a pointer, so the forwarding wrappers take uintptr_t arguments with the exact arity of each
 * function: ABI-correct on the usual 64-bit platforms without needing the PKCS#11 headers.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef unsigned long CK_RV;
#define CKR_OK 0x0UL
#define CKR_GENERAL_ERROR 0x5UL
#define CKR_DEVICE_ERROR 0x30UL
#define NFUNCS 68

typedef struct {
    unsigned char major, minor;
    void *f[NFUNCS];
} function_list;

enum { MODE_OK = 0, MODE_DEVICE_ERROR = 1, MODE_DELAY = 2 };

static function_list *real_list;
static function_list shim_list;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static CK_RV load_rv = CKR_GENERAL_ERROR;
static atomic_long last_check_ns = -1000000000L;
static atomic_int mode = MODE_OK;
static atomic_int delay_ms = 0;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void refresh(void) {
    long now = now_ns();
    long last = atomic_load_explicit(&last_check_ns, memory_order_relaxed);
    if (now - last < 20000000L) return;
    if (!atomic_compare_exchange_strong(&last_check_ns, &last, now)) return;
    const char *path = getenv("FAULTSHIM_CONTROL");
    int m = MODE_OK, d = 0;
    if (path && *path) {
        FILE *fp = fopen(path, "r");
        if (fp) {
            char buf[64] = {0};
            if (fgets(buf, sizeof buf, fp)) {
                if (strncmp(buf, "device_error", 12) == 0) {
                    m = MODE_DEVICE_ERROR;
                } else if (strncmp(buf, "delay", 5) == 0) {
                    m = MODE_DELAY;
                    d = atoi(buf + 5);
                }
            }
            fclose(fp);
        }
    }
    atomic_store(&delay_ms, d);
    atomic_store(&mode, m);
}

/* Returns nonzero when the call must fail with CKR_DEVICE_ERROR. */
static int gate(int crypto) {
    refresh();
    int m = atomic_load_explicit(&mode, memory_order_relaxed);
    if (m == MODE_DEVICE_ERROR) return 1;
    if (m == MODE_DELAY && crypto) {
        int d = atomic_load_explicit(&delay_ms, memory_order_relaxed);
        struct timespec ts = {d / 1000, (long)(d % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0) {}
    }
    return 0;
}

typedef uintptr_t U;
#define W1(i, c) static CK_RV w##i(U a) { if (gate(c)) return CKR_DEVICE_ERROR; \
    return ((CK_RV (*)(U))real_list->f[i])(a); }
#define W2(i, c) static CK_RV w##i(U a, U b) { if (gate(c)) return CKR_DEVICE_ERROR; \
    return ((CK_RV (*)(U, U))real_list->f[i])(a, b); }
#define W3(i, c) static CK_RV w##i(U a, U b, U d) { if (gate(c)) return CKR_DEVICE_ERROR; \
    return ((CK_RV (*)(U, U, U))real_list->f[i])(a, b, d); }
#define W4(i, c) static CK_RV w##i(U a, U b, U d, U e) { if (gate(c)) return CKR_DEVICE_ERROR; \
    return ((CK_RV (*)(U, U, U, U))real_list->f[i])(a, b, d, e); }
#define W5(i, c) static CK_RV w##i(U a, U b, U d, U e, U g) { \
    if (gate(c)) return CKR_DEVICE_ERROR; \
    return ((CK_RV (*)(U, U, U, U, U))real_list->f[i])(a, b, d, e, g); }
#define W6(i, c) static CK_RV w##i(U a, U b, U d, U e, U g, U h) { \
    if (gate(c)) return CKR_DEVICE_ERROR; \
    return ((CK_RV (*)(U, U, U, U, U, U))real_list->f[i])(a, b, d, e, g, h); }
#define W8(i, c) static CK_RV w##i(U a, U b, U d, U e, U g, U h, U j, U k) { \
    if (gate(c)) return CKR_DEVICE_ERROR; \
    return ((CK_RV (*)(U, U, U, U, U, U, U, U))real_list->f[i])(a, b, d, e, g, h, j, k); }

/* index, arity and whether the call counts as "crypto" (delayed in delay mode) */
W1(0, 0)  W1(1, 0)  /* 2: C_GetInfo, 3: C_GetFunctionList, below */
W3(4, 0)  W2(5, 0)  W2(6, 0)  W3(7, 0)  W3(8, 0)  W4(9, 0)  W3(10, 0) W5(11, 0)
W5(12, 0) W1(13, 0) W1(14, 0) W2(15, 0) W3(16, 0) W5(17, 0) W4(18, 0) W1(19, 0)
W4(20, 0) W5(21, 0) W2(22, 0) W3(23, 0) W4(24, 0) W4(25, 0) W3(26, 0) W4(27, 0)
W1(28, 0) W3(29, 0) W5(30, 1) W5(31, 1) W3(32, 1) W3(33, 0) W5(34, 1) W5(35, 1)
W3(36, 1) W2(37, 0) W5(38, 1) W3(39, 1) W2(40, 1) W3(41, 1) W3(42, 0) W5(43, 1)
W3(44, 1) W3(45, 1) W3(46, 0) W5(47, 1) W3(48, 0) W5(49, 1) W3(50, 1) W3(51, 1)
W3(52, 0) W5(53, 1) W5(54, 1) W5(55, 1) W5(56, 1) W5(57, 1) W5(58, 1) W8(59, 1)
W6(60, 1) W8(61, 1) W6(62, 1) W3(63, 0) W3(64, 1) W1(65, 0) W1(66, 0) W3(67, 0)

/* C_GetInfo reports the shim as manufacturer, so the pool treats it as an ordinary (network-like)
 * module and does not apply its SoftHSMv2-specific call serialisation. */
static CK_RV w2(U info) {
    if (gate(0)) return CKR_DEVICE_ERROR;
    CK_RV rv = ((CK_RV (*)(U))real_list->f[2])(info);
    if (rv == CKR_OK && info) {
        static const char name[] = "xksproxy faultshim";
        unsigned char *id = (unsigned char *)info + 2; /* after CK_VERSION cryptokiVersion */
        memset(id, ' ', 32);
        memcpy(id, name, sizeof name - 1);
    }
    return rv;
}

CK_RV C_GetFunctionList(function_list **out);

static void load(void) {
    const char *path = getenv("FAULTSHIM_MODULE");
    if (!path || !*path) path = "/usr/lib/softhsm/libsofthsm2.so";
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "faultshim: cannot load %s: %s\n", path, dlerror()); return; }
    CK_RV (*get)(function_list **) = (CK_RV (*)(function_list **))dlsym(h, "C_GetFunctionList");
    if (!get || get(&real_list) != CKR_OK || !real_list) return;
    void *w[NFUNCS] = {
        w0,  w1,  w2,  (void *)C_GetFunctionList, w4,  w5,  w6,  w7,  w8,  w9,
        w10, w11, w12, w13, w14, w15, w16, w17, w18, w19, w20, w21, w22, w23, w24, w25, w26,
        w27, w28, w29, w30, w31, w32, w33, w34, w35, w36, w37, w38, w39, w40, w41, w42, w43,
        w44, w45, w46, w47, w48, w49, w50, w51, w52, w53, w54, w55, w56, w57, w58, w59, w60,
        w61, w62, w63, w64, w65, w66, w67,
    };
    shim_list.major = 2;
    shim_list.minor = 40;
    for (int i = 0; i < NFUNCS; i++) shim_list.f[i] = real_list->f[i] ? w[i] : NULL;
    load_rv = CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(function_list **out) {
    pthread_once(&once, load);
    if (load_rv != CKR_OK) return load_rv;
    *out = &shim_list;
    return CKR_OK;
}
