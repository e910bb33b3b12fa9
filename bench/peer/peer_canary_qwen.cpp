// Times CrispASR's Canary-Qwen library (src/canary_qwen.h, the public C API its `crispasr --backend canary-qwen`
// CLI wraps) for bench/peer_crispasr.py. Ours, not the peer's: it does what examples/cli/
// crispasr_backend_canary_qwen.cpp does (default params, flash attention on as the CLI's default, greedy,
// --max-new-tokens forwarded) without the CLI's ~110 other libraries.
//
//   peer-canary-qwen MODEL.gguf THREADS MAX_NEW_TOKENS BATCHES REPEATS CLIP.f32 [CLIP.f32 ...]
//
// BATCHES: comma-separated batch sizes ("8", "8,16"; "1": none). CLIP.f32: raw little-endian float32 samples,
// 16 kHz mono. Prints JSON lines on stdout:
//   {"event":"load", "load_s":..., "rss_gb":...}
//   {"event":"b1", "clip":i, "rep":r, "e2e_s":..., "n_tokens":...}      one clip alone, per repeat
//   {"event":"bN", "batch":N, "rep":r, "e2e_s":..., "n_tokens":...}    N clips one after another
//   {"event":"end", "peak_rss_gb":...}
// and, before every timed call, "PEER_CALL <tag>" on stderr, so that the per-stage lines the peer prints itself
// under CRISPASR_CANARY_QWEN_BENCH=1 ("canary_qwen_bench: <stage> <ms> ms") can be attributed to the call.
#include "canary_qwen.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static double peak_rss_gb() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss * 1024.0 / 1e9;  // Linux: kilobytes
}

static std::vector<float> read_f32(const char* path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) {
        std::fprintf(stderr, "cannot read %s\n", path);
        std::exit(2);
    }
    const std::streamsize n = f.tellg();
    std::vector<float> x(static_cast<size_t>(n) / sizeof(float));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(x.data()), static_cast<std::streamsize>(x.size() * sizeof(float)));
    return x;
}

// One transcription; returns the number of generated tokens (-1 on failure).
static int transcribe(canary_qwen_context* ctx, const std::vector<float>& clip, const std::string& tag) {
    std::fprintf(stderr, "PEER_CALL %s\n", tag.c_str());
    std::fflush(stderr);
    canary_qwen_result* r = canary_qwen_transcribe_ex(ctx, clip.data(), static_cast<int>(clip.size()));
    if (!r)
        return -1;
    const int n = r->n_tokens;
    canary_qwen_result_free(r);
    return n;
}

int main(int argc, char** argv) {
    if (argc < 7) {
        std::fprintf(stderr, "usage: %s MODEL.gguf THREADS MAX_NEW_TOKENS BATCHES REPEATS CLIP.f32 [CLIP.f32 ...]\n",
                     argv[0]);
        return 2;
    }
    const char* model = argv[1];
    const int threads = std::atoi(argv[2]);
    const int max_new = std::atoi(argv[3]);
    std::vector<int> batches;
    {
        std::stringstream ss(argv[4]);
        std::string item;
        while (std::getline(ss, item, ','))
            if (std::atoi(item.c_str()) > 1)
                batches.push_back(std::atoi(item.c_str()));
    }
    const int repeats = std::atoi(argv[5]);
    std::vector<std::vector<float>> clips;
    for (int i = 6; i < argc; i++)
        clips.push_back(read_f32(argv[i]));

    canary_qwen_context_params cp = canary_qwen_context_default_params();
    cp.n_threads = threads;
    cp.verbosity = 0;
    cp.use_gpu = false;
    cp.flash_attn = true;  // the crispasr CLI's default (whisper_params.flash_attn)
    double t0 = now_s();
    canary_qwen_context* ctx = canary_qwen_init_from_file(model, cp);
    const double load_s = now_s() - t0;
    if (!ctx) {
        std::fprintf(stderr, "failed to load %s\n", model);
        return 1;
    }
    std::printf("{\"event\":\"load\",\"load_s\":%.4f,\"rss_gb\":%.4f}\n", load_s, peak_rss_gb());
    std::fflush(stdout);

    canary_qwen_set_temperature(ctx, 0.0f, 0);
    canary_qwen_set_beam_size(ctx, 1);

    // warm-up: 2 tokens on the shortest clip (as bench/_worker.py does for nemo_lite)
    size_t shortest = 0;
    for (size_t i = 1; i < clips.size(); i++)
        if (clips[i].size() < clips[shortest].size())
            shortest = i;
    canary_qwen_set_max_new_tokens(ctx, 2);
    transcribe(ctx, clips[shortest], "warmup");

    canary_qwen_set_max_new_tokens(ctx, max_new);
    for (int rep = 0; rep < repeats; rep++) {
        for (size_t i = 0; i < clips.size(); i++) {
            t0 = now_s();
            const int n = transcribe(ctx, clips[i], "b1 " + std::to_string(i) + " " + std::to_string(rep));
            std::printf("{\"event\":\"b1\",\"clip\":%zu,\"rep\":%d,\"e2e_s\":%.4f,\"n_tokens\":%d}\n", i, rep,
                        now_s() - t0, n);
            std::fflush(stdout);
        }
        for (const int batch : batches) {
            // the library has no batch API: `batch` clips (the clip set repeated), one after another
            t0 = now_s();
            int n = 0;
            for (int b = 0; b < batch; b++)
                n += transcribe(ctx, clips[b % clips.size()],
                                "b" + std::to_string(batch) + " " + std::to_string(b) + " " + std::to_string(rep));
            std::printf("{\"event\":\"bN\",\"batch\":%d,\"rep\":%d,\"e2e_s\":%.4f,\"n_tokens\":%d}\n", batch, rep,
                        now_s() - t0, n);
            std::fflush(stdout);
        }
    }
    canary_qwen_free(ctx);
    std::printf("{\"event\":\"end\",\"peak_rss_gb\":%.4f}\n", peak_rss_gb());
    return 0;
}
