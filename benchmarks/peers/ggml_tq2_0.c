/*
 * ggml_tq2_0.c -- peer benchmark: llama.cpp/ggml's ternary CPU matmul (GGML_TYPE_TQ2_0).
 *
 * What it measures: the wall time of ggml_mul_mat(W, X) on the ggml CPU backend, where
 * W is a K x N TQ2_0 weight (ggml convention ne0 = K, ne1 = N; 2 bits per weight plus one
 * fp16 scale per 256-element block) and X is an F32 activation [K, M]. ggml converts X to
 * Q8_K (8-bit activations) inside the op, so the timing includes that activation
 * quantization, exactly as in llama.cpp inference.
 *
 * LAYERS distinct weights are built (so that, like a real model, the weights do not all
 * stay in cache) and one graph holding one mul_mat per layer is computed with a persistent
 * THREADS-thread ggml threadpool. After one warm-up pass, REPEATS passes are timed; the
 * per-call time is (pass time / LAYERS). Correctness is checked once: layer 0's output is
 * compared with a double-precision product of ggml's own dequantized TQ2_0 weights and X
 * (first min(M, 8) columns); rel_err = max |y - ref| / max |ref|.
 *
 * Usage: ggml_tq2_0 K N M LAYERS REPEATS THREADS      (K must be a multiple of 256)
 * Prints one JSON line on stdout. Build with -DGGML_COMMIT="\"<hash>\"" (see peer_ggml.py).
 * This file is our own code; it links against a locally built, uncommitted ggml.
 */
#include "ggml.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef GGML_COMMIT
#define GGML_COMMIT "unknown"
#endif

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_next(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static float rng_uniform(void) { /* in [-1, 1) */
    return (float)((rng_next() >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static int cmp_double(const void * a, const void * b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s K N M LAYERS REPEATS THREADS\n", argv[0]);
        return 2;
    }
    const int64_t K = atoll(argv[1]), N = atoll(argv[2]), M = atoll(argv[3]);
    const int layers = atoi(argv[4]), repeats = atoi(argv[5]), threads = atoi(argv[6]);
    const enum ggml_type wtype = GGML_TYPE_TQ2_0;
    const int64_t blck = ggml_blck_size(wtype);
    if (K <= 0 || N <= 0 || M <= 0 || layers <= 0 || repeats <= 0 || threads <= 0 || K % blck != 0) {
        fprintf(stderr, "bad arguments: need positive sizes and K %% %lld == 0\n", (long long)blck);
        return 2;
    }

    ggml_time_init();
    ggml_cpu_init();

    /* one context holds weights, activation, outputs and the graph */
    const size_t row_size = ggml_row_size(wtype, K);
    const int graph_size = 2 * layers + 16 > GGML_DEFAULT_GRAPH_SIZE ? 2 * layers + 16 : GGML_DEFAULT_GRAPH_SIZE;
    const size_t mem = (size_t)layers * (row_size * N + sizeof(float) * N * M + 2 * ggml_tensor_overhead())
                     + sizeof(float) * K * M + ggml_tensor_overhead()
                     + ggml_graph_overhead_custom(graph_size, false) + (1u << 20);
    struct ggml_init_params ip = { .mem_size = mem, .mem_buffer = NULL, .no_alloc = false };
    struct ggml_context * ctx = ggml_init(ip);
    if (!ctx) { fprintf(stderr, "ggml_init failed (%zu bytes)\n", mem); return 1; }

    /* weights: ternary {-1,0,1} * scale, quantized with ggml's own TQ2_0 quantizer */
    const float scale = 0.03125f; /* exact in fp16 */
    const int64_t chunk_rows = 64;
    float * fbuf = malloc(sizeof(float) * K * chunk_rows);
    struct ggml_tensor ** w = malloc(sizeof(*w) * layers);
    struct ggml_tensor ** y = malloc(sizeof(*y) * layers);
    if (!fbuf || !w || !y) { fprintf(stderr, "out of memory\n"); return 1; }
    for (int l = 0; l < layers; l++) {
        w[l] = ggml_new_tensor_2d(ctx, wtype, K, N);
        for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
            const int64_t nr = N - r0 < chunk_rows ? N - r0 : chunk_rows;
            for (int64_t i = 0; i < nr * K; i++) fbuf[i] = (float)((int)(rng_next() % 3) - 1) * scale;
            ggml_quantize_chunk(wtype, fbuf, (char *)w[l]->data + r0 * row_size, 0, nr, K, NULL);
        }
    }
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, M);
    for (int64_t i = 0; i < K * M; i++) ((float *)x->data)[i] = rng_uniform();

    struct ggml_cgraph * gf = ggml_new_graph_custom(ctx, graph_size, false);
    for (int l = 0; l < layers; l++) {
        y[l] = ggml_mul_mat(ctx, w[l], x); /* [N, M] */
        ggml_build_forward_expand(gf, y[l]);
    }

    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
    struct ggml_threadpool * tp = ggml_threadpool_new(&tpp);
    struct ggml_cplan plan = ggml_graph_plan(gf, threads, tp);
    uint8_t * work = plan.work_size ? malloc(plan.work_size) : NULL;
    if (plan.work_size && !work) { fprintf(stderr, "out of memory (work)\n"); return 1; }
    plan.work_data = work;

    /* warm-up pass, also used for the correctness check */
    if (ggml_graph_compute(gf, &plan) != GGML_STATUS_SUCCESS) { fprintf(stderr, "compute failed\n"); return 1; }

    const ggml_to_float_t to_float = ggml_get_type_traits(wtype)->to_float;
    const int64_t mc = M < 8 ? M : 8;
    double max_err = 0.0, max_ref = 0.0;
    for (int64_t n = 0; n < N; n++) {
        to_float((const char *)w[0]->data + n * row_size, fbuf, K);
        for (int64_t m = 0; m < mc; m++) {
            const float * xc = (const float *)x->data + m * K;
            double ref = 0.0;
            for (int64_t k = 0; k < K; k++) ref += (double)fbuf[k] * xc[k];
            const double got = ((const float *)y[0]->data)[m * N + n];
            if (fabs(got - ref) > max_err) max_err = fabs(got - ref);
            if (fabs(ref) > max_ref) max_ref = fabs(ref);
        }
    }
    const double rel_err = max_ref > 0 ? max_err / max_ref : max_err;

    double * ms = malloc(sizeof(double) * repeats);
    for (int r = 0; r < repeats; r++) {
        const int64_t t0 = ggml_time_us();
        if (ggml_graph_compute(gf, &plan) != GGML_STATUS_SUCCESS) { fprintf(stderr, "compute failed\n"); return 1; }
        ms[r] = (double)(ggml_time_us() - t0) / 1000.0 / layers;
    }
    qsort(ms, repeats, sizeof(double), cmp_double);
    const double median = repeats % 2 ? ms[repeats / 2] : 0.5 * (ms[repeats / 2 - 1] + ms[repeats / 2]);

    printf("{\"K\":%lld,\"N\":%lld,\"M\":%lld,\"layers\":%d,\"repeats\":%d,\"threads\":%d,"
           "\"median_ms_per_call\":%.6f,\"min_ms_per_call\":%.6f,\"rel_err\":%.3e,"
           "\"weight_type\":\"%s\",\"act_type\":\"%s\",\"ggml_commit\":\"%s\"}\n",
           (long long)K, (long long)N, (long long)M, layers, repeats, threads, median, ms[0], rel_err,
           ggml_type_name(wtype), ggml_type_name(ggml_get_type_traits_cpu(wtype)->vec_dot_type), GGML_COMMIT);

    free(ms); free(work); free(w); free(y); free(fbuf);
    ggml_threadpool_free(tp);
    ggml_free(ctx);
    return 0;
}
