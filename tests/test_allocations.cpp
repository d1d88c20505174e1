// The training and evaluation step loops must not touch the heap: every
// buffer is allocated when the model, workspace and optimizer are built.
//
// This executable replaces the C allocation functions (forwarding to glibc's
// __libc_* entry points) and every replaceable global operator new/delete, so
// heap calls made by our code, Eigen, OpenBLAS and libgomp are all counted
// while counting is on. NOTE: memory mapped directly with mmap (as OpenBLAS
// may do for its work buffers) bypasses these functions and is not counted.

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "data/batcher.h"
#include "model/model.h"
#include "tensor/gemm.h"
#include "test_support.h"
#include "train/evaluate.h"
#include "train/optimizer.h"

extern "C" {
void* __libc_malloc(std::size_t size);
void* __libc_calloc(std::size_t count, std::size_t size);
void* __libc_realloc(void* pointer, std::size_t size);
void __libc_free(void* pointer);
void* __libc_memalign(std::size_t alignment, std::size_t size);
}

namespace {

std::atomic<bool> g_counting{false};
std::atomic<std::int64_t> g_allocations{0};
std::atomic<std::int64_t> g_frees{0};

// Return addresses of the first counted allocations, for the failure message.
constexpr int kRecordedCallers = 8;
std::atomic<void*> g_callers[kRecordedCallers];

void note_allocation(void* caller) {
  if (!g_counting.load(std::memory_order_relaxed)) return;
  const std::int64_t index = g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (index < kRecordedCallers) g_callers[index].store(caller, std::memory_order_relaxed);
}

void note_free(void* pointer) {
  if (pointer != nullptr && g_counting.load(std::memory_order_relaxed)) {
    g_frees.fetch_add(1, std::memory_order_relaxed);
  }
}

void* allocate_or_throw(std::size_t size, void* caller) {
  note_allocation(caller);
  void* pointer = __libc_malloc(size);
  if (pointer == nullptr) throw std::bad_alloc();
  return pointer;
}

void* allocate_aligned_or_throw(std::size_t size, std::align_val_t alignment, void* caller) {
  note_allocation(caller);
  void* pointer = __libc_memalign(static_cast<std::size_t>(alignment), size);
  if (pointer == nullptr) throw std::bad_alloc();
  return pointer;
}

void release(void* pointer) {
  note_free(pointer);
  __libc_free(pointer);
}

}  // namespace

// C allocation functions. glibc declares them noexcept in C++.
extern "C" void* malloc(std::size_t size) noexcept {
  note_allocation(__builtin_return_address(0));
  return __libc_malloc(size);
}

extern "C" void* calloc(std::size_t count, std::size_t size) noexcept {
  note_allocation(__builtin_return_address(0));
  return __libc_calloc(count, size);
}

extern "C" void* realloc(void* pointer, std::size_t size) noexcept {
  note_allocation(__builtin_return_address(0));
  return __libc_realloc(pointer, size);
}

extern "C" void free(void* pointer) noexcept {
  note_free(pointer);
  __libc_free(pointer);
}

extern "C" int posix_memalign(void** result, std::size_t alignment, std::size_t size) noexcept {
  note_allocation(__builtin_return_address(0));
  void* pointer = __libc_memalign(alignment, size);
  if (pointer == nullptr) return ENOMEM;
  *result = pointer;
  return 0;
}

extern "C" void* aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
  note_allocation(__builtin_return_address(0));
  return __libc_memalign(alignment, size);
}

extern "C" void* memalign(std::size_t alignment, std::size_t size) noexcept {
  note_allocation(__builtin_return_address(0));
  return __libc_memalign(alignment, size);
}

// Replaceable global allocation functions.
void* operator new(std::size_t size) { return allocate_or_throw(size, __builtin_return_address(0)); }
void* operator new[](std::size_t size) {
  return allocate_or_throw(size, __builtin_return_address(0));
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  note_allocation(__builtin_return_address(0));
  return __libc_malloc(size);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  note_allocation(__builtin_return_address(0));
  return __libc_malloc(size);
}
void* operator new(std::size_t size, std::align_val_t alignment) {
  return allocate_aligned_or_throw(size, alignment, __builtin_return_address(0));
}
void* operator new[](std::size_t size, std::align_val_t alignment) {
  return allocate_aligned_or_throw(size, alignment, __builtin_return_address(0));
}
void* operator new(std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  note_allocation(__builtin_return_address(0));
  return __libc_memalign(static_cast<std::size_t>(alignment), size);
}
void* operator new[](std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  note_allocation(__builtin_return_address(0));
  return __libc_memalign(static_cast<std::size_t>(alignment), size);
}

void operator delete(void* pointer) noexcept { release(pointer); }
void operator delete[](void* pointer) noexcept { release(pointer); }
void operator delete(void* pointer, const std::nothrow_t&) noexcept { release(pointer); }
void operator delete[](void* pointer, const std::nothrow_t&) noexcept { release(pointer); }
void operator delete(void* pointer, std::size_t) noexcept { release(pointer); }
void operator delete[](void* pointer, std::size_t) noexcept { release(pointer); }
void operator delete(void* pointer, std::align_val_t) noexcept { release(pointer); }
void operator delete[](void* pointer, std::align_val_t) noexcept { release(pointer); }
void operator delete(void* pointer, std::align_val_t, const std::nothrow_t&) noexcept {
  release(pointer);
}
void operator delete[](void* pointer, std::align_val_t, const std::nothrow_t&) noexcept {
  release(pointer);
}
void operator delete(void* pointer, std::size_t, std::align_val_t) noexcept { release(pointer); }
void operator delete[](void* pointer, std::size_t, std::align_val_t) noexcept { release(pointer); }

namespace lstm {
namespace {

using test::make_config;
using test::random_ids;

// Counts heap calls between construction and stop(); stops in the
// destructor too, so a failed assertion cannot leave counting on.
class AllocationCounter {
 public:
  AllocationCounter() {
    g_allocations.store(0);
    g_frees.store(0);
    for (auto& caller : g_callers) caller.store(nullptr);
    g_counting.store(true);
  }
  ~AllocationCounter() { stop(); }
  void stop() { g_counting.store(false); }

  std::int64_t allocations() const { return g_allocations.load(); }
  std::int64_t frees() const { return g_frees.load(); }

  // Where the first allocations came from: the shared object, its symbol when
  // dladdr finds one, and the offset to pass to `addr2line -f -C -e OBJECT`.
  std::string describe_callers() const {
    std::ostringstream out;
    for (const auto& entry : g_callers) {
      void* caller = entry.load();
      if (caller == nullptr) break;
      out << "\n  called from " << caller;
      Dl_info info{};
      if (dladdr(caller, &info) != 0) {
        const auto offset = reinterpret_cast<std::uintptr_t>(caller) -
                            reinterpret_cast<std::uintptr_t>(info.dli_fbase);
        out << " = " << (info.dli_fname != nullptr ? info.dli_fname : "?") << "+0x" << std::hex
            << offset << std::dec;
        if (info.dli_sname != nullptr) out << " (" << info.dli_sname << ")";
      }
    }
    return out.str();
  }
};

struct LoopCase {
  CellType cell;
  OptimizerKind optimizer;
  int threads;
  // Embedding and hidden size, and vocabulary. The products of size 650 over
  // all steps are large enough for OpenBLAS to thread them, and an LSTM's
  // evaluation steps are split by hidden units (Wh is 6.8 MB). With a
  // vocabulary of 2000 even the decoder of a short window (12 columns) is
  // too large for OpenBLAS's small-matrix kernels, which allocate, as the
  // decoder of a PTB window is.
  int size = 16;
  int vocab = 40;
};

std::string loop_case_name(const testing::TestParamInfo<LoopCase>& info) {
  return std::string(cell_name(info.param.cell)) +
         (info.param.optimizer == OptimizerKind::kSgd ? "_sgd" : "_adam") + "_" +
         std::to_string(info.param.threads) + "threads_size" + std::to_string(info.param.size);
}

constexpr int kLayers = 2, kBatch = 4, kBptt = 8;
// 4 streams of 44 tokens: 43 positions = 5 windows of 8 and one of 3, so
// the counted steps include short windows and restarts of the stream.
constexpr int kTokens = kBatch * 44;
constexpr int kWarmupSteps = 3;
constexpr int kCountedSteps = 20;

class StepLoop : public testing::TestWithParam<LoopCase> {
 protected:
  void SetUp() override {
    set_num_threads(GetParam().threads);
    config_ = make_config(GetParam().cell, GetParam().vocab, GetParam().size, GetParam().size, kLayers);
    config_.tie_weights = true;
    config_.dropout = 0.5f;
    Rng rng(1);
    ids_ = random_ids(kTokens, GetParam().vocab, rng);
  }

  ModelConfig config_;
  std::vector<TokenId> ids_;
};

TEST_P(StepLoop, TrainingStepsAllocateNothing) {
  LanguageModel model(config_);
  Rng init_rng(2);
  model.initialize(init_rng);
  Workspace ws(config_, kBatch, kBptt);
  const StreamBatcher batcher(&ids_, kBatch);
  TrainSettings settings;
  settings.optimizer = GetParam().optimizer;
  const double lr = settings.optimizer == OptimizerKind::kSgd ? 1.0 : 1e-3;
  Optimizer optimizer(settings, model.params().total_size());
  Rng dropout_rng(3);
  ParamStore& params = model.params();
  const Vector initial_values = params.values();

  std::int64_t position = 0;
  double loss_sum = 0.0;
  int clipped = 0;
  auto train_step = [&]() {
    if (position >= batcher.positions()) {
      position = 0;
      reset_state(ws);
    }
    const int steps = batcher.fill(position, kBptt, ws.inputs.data(), ws.targets.data());
    position += steps;
    params.zero_grads();
    loss_sum += model_forward(model, ws, steps, /*training=*/true, &dropout_rng);
    model_backward(model, ws, steps);
    const double norm = global_norm(params.grads());
    clipped += clip_gradients(params.grads(), norm, settings.clip_norm) ? 1 : 0;
    optimizer.step(params.values(), params.grads(), lr);
    carry_state(ws, steps);
  };

  // The first steps may start thread pools and size their buffers.
  for (int i = 0; i < kWarmupSteps; ++i) train_step();
  AllocationCounter counter;
  for (int i = 0; i < kCountedSteps; ++i) train_step();
  counter.stop();

  EXPECT_EQ(counter.allocations(), 0)
      << counter.allocations() << " heap allocations in " << kCountedSteps
      << " training steps" << counter.describe_callers();
  EXPECT_EQ(counter.frees(), 0) << counter.frees() << " heap frees in " << kCountedSteps
                                << " training steps";
  // The loop really trained.
  EXPECT_TRUE(std::isfinite(loss_sum));
  EXPECT_GT(clipped, 0) << "no step reached the clipping branch";
  EXPECT_FALSE(params.values() == initial_values) << "the optimizer changed no parameter";
}

TEST_P(StepLoop, EvaluationWindowsAllocateNothing) {
  LanguageModel model(config_);
  Rng init_rng(4);
  model.initialize(init_rng);
  Workspace ws(config_, kBatch, kBptt, WorkspaceUse::kEvaluation);
  const StreamBatcher batcher(&ids_, kBatch);

  std::int64_t position = 0;
  double loss_sum = 0.0;
  auto eval_window = [&]() {
    if (position >= batcher.positions()) {
      position = 0;
      reset_state(ws);
    }
    const int steps = batcher.fill(position, kBptt, ws.inputs.data(), ws.targets.data());
    position += steps;
    loss_sum += model_forward(model, ws, steps, /*training=*/false, nullptr);
    carry_state(ws, steps);
  };

  for (int i = 0; i < kWarmupSteps; ++i) eval_window();
  {
    AllocationCounter counter;
    for (int i = 0; i < kCountedSteps; ++i) eval_window();
    counter.stop();
    EXPECT_EQ(counter.allocations(), 0)
        << counter.allocations() << " heap allocations in " << kCountedSteps
        << " evaluation windows" << counter.describe_callers();
    EXPECT_EQ(counter.frees(), 0) << counter.frees() << " heap frees in " << kCountedSteps
                                  << " evaluation windows";
  }
  EXPECT_TRUE(std::isfinite(loss_sum));

  // evaluate() without per-token losses runs the same loop over a whole split.
  evaluate(model, ws, ids_);
  AllocationCounter counter;
  const EvalResult result = evaluate(model, ws, ids_);
  counter.stop();
  EXPECT_EQ(counter.allocations(), 0)
      << counter.allocations() << " heap allocations in evaluate()" << counter.describe_callers();
  EXPECT_EQ(result.tokens, batcher.tokens());
}

INSTANTIATE_TEST_SUITE_P(
    TiedTwoLayers, StepLoop,
    testing::Values(LoopCase{CellType::kLstm, OptimizerKind::kSgd, 1},
                    LoopCase{CellType::kLstm, OptimizerKind::kAdam, 1},
                    LoopCase{CellType::kGru, OptimizerKind::kSgd, 1},
                    LoopCase{CellType::kGru, OptimizerKind::kAdam, 1},
                    LoopCase{CellType::kLstm, OptimizerKind::kSgd, 2},
                    LoopCase{CellType::kLstm, OptimizerKind::kAdam, 2},
                    LoopCase{CellType::kGru, OptimizerKind::kSgd, 2},
                    LoopCase{CellType::kGru, OptimizerKind::kAdam, 2},
                    LoopCase{CellType::kLstm, OptimizerKind::kSgd, 2, 650, 2000},
                    LoopCase{CellType::kGru, OptimizerKind::kSgd, 2, 650, 2000}),
    loop_case_name);

// Keeps the compiler from removing an allocation whose result is unused.
void escape(void* pointer) { asm volatile("" : : "g"(pointer) : "memory"); }

// The counter must see the allocations it is meant to catch, or a zero count
// above would mean nothing.
TEST(AllocationCounter, CountsEveryKind) {
  struct Call {
    const char* name;
    std::int64_t allocations;
  };
  std::vector<Call> calls;
  calls.reserve(8);
  std::int64_t before = 0;
  AllocationCounter counter;
  auto record = [&](const char* name, void* pointer) {
    escape(pointer);
    calls.push_back({name, counter.allocations() - before});
    before = counter.allocations();
  };

  void* a = std::malloc(16);
  record("malloc", a);
  void* b = std::calloc(2, 8);
  record("calloc", b);
  b = std::realloc(b, 64);
  record("realloc", b);
  void* c = nullptr;
  const int memalign_result = posix_memalign(&c, 64, 32);
  record("posix_memalign", c);
  void* d = std::aligned_alloc(64, 64);
  record("aligned_alloc", d);
  auto* e = new int(1);
  record("operator new", e);
  auto* f = new (std::align_val_t{64}) float[16];
  record("aligned operator new[]", f);
  std::free(a);
  std::free(b);
  std::free(c);
  std::free(d);
  delete e;
  ::operator delete[](f, std::align_val_t{64});
  counter.stop();

  EXPECT_EQ(memalign_result, 0);
  for (const Call& call : calls) EXPECT_EQ(call.allocations, 1) << call.name;
  EXPECT_EQ(counter.frees(), 6);
}

}  // namespace
}  // namespace lstm
