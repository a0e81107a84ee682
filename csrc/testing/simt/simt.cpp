// SIMT emulator core: fibers, the scheduler, barriers, warp collectives, the shared-memory
// checker, guarded global buffers and the runtime API of include/cuda_runtime.h.
//
// One launch at a time (a mutex), on the calling OS thread. The blocks of an ordinary launch
// run one after another in an order drawn from the seed; those of a cooperative launch run
// together. Inside a block, the scheduler resumes a random ready fiber each time one yields.
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <unordered_map>

#include "include/cuda_runtime.h"

// A fiber switch that saves only what the ABI asks a callee to keep (swapcontext also makes
// two signal-mask system calls per switch, which made the emulator ten times slower).
#if !defined(__x86_64__)
#error "the SIMT emulator's fiber switch is written for x86-64"
#endif
extern "C" void simt_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl simt_switch
.type simt_switch,@function
simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size simt_switch,.-simt_switch
)");

namespace simt {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kStaticSmemLimit = 48 * 1024;  // what CUDA allows without the opt-in
constexpr int kSmemOptin = 227 * 1024;          // H100/H200
constexpr int kMaxThreads = 1024;

size_t page_size() {
  static const size_t size = size_t(sysconf(_SC_PAGESIZE));
  return size;
}

std::string hex(const void* p) {
  char s[32];
  std::snprintf(s, sizeof s, "%p", p);
  return s;
}

std::string dims(unsigned x, unsigned y, unsigned z) {
  return "(" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + ")";
}

// ---- guarded buffers -----------------------------------------------------------------------

struct Buffer {
  char* map;
  size_t map_bytes;
  char* data;
  size_t bytes;
  std::string name;
  bool device;  // from cudaMallocAsync (counted as live until freed)
};

std::map<uintptr_t, Buffer>& buffers() {  // by map start
  static std::map<uintptr_t, Buffer> all;
  return all;
}

// The buffer whose mapping (guard pages included) contains p, or nullptr.
const Buffer* buffer_around(const void* p) {
  auto& all = buffers();
  auto it = all.upper_bound(uintptr_t(p));
  if (it == all.begin()) return nullptr;
  --it;
  const Buffer& b = it->second;
  return uintptr_t(p) < uintptr_t(b.map) + b.map_bytes ? &b : nullptr;
}

// ---- fibers and blocks ---------------------------------------------------------------------

enum class State { ready, barrier, warp, grid, done };

struct Block;

struct Thread {
  uint3 idx;
  int tid = 0, warp = 0, lane = 0;
  Block* block = nullptr;
  State state = State::ready;
  void* sp = nullptr;  // saved stack pointer while switched out
  char* stack = nullptr;
  const char* file = "";  // where it waits
  int line = 0;
  // the pending warp collective
  WarpOp op = WarpOp::sync;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
};

struct ByteShadow {
  uint32_t w_epoch = 0, r_epoch = 0;  // barrier interval of the last write / read (0 = none)
  int32_t writer = -1, reader = -1;   // thread; reader -2 = several threads
  uint32_t w_wsync = 0, r_wsync = 0;  // __syncwarp count of that thread's warp at the access
  bool written = false;
};

struct Allocation {
  size_t offset, bytes;
  std::string name;
};

struct Block {
  uint3 idx;
  std::vector<Thread> threads;
  uint32_t epoch = 1;
  std::vector<uint32_t> warp_syncs;
  int done = 0, at_barrier = 0;
  std::vector<char> storage;  // shared memory: dynamic part first, then FF_SHARED variables
  char* arena = nullptr;      // storage, 128-byte aligned as on a GPU
  size_t capacity = 0;
  std::vector<ByteShadow> shadow;
  std::vector<Allocation> allocations;
  std::unordered_map<const SharedSite*, size_t> offsets;
  size_t used = 0;
};

struct KernelInfo {
  int max_dynamic_smem = int(kStaticSmemLimit);
  int static_smem = 0;
};

struct Launch {
  std::string name;
  const void* kernel;
  dim3 grid, block;
  size_t dynamic_smem;
  bool cooperative;
  const std::function<void()>* body;
  std::vector<std::unique_ptr<Block>> blocks;  // running now
  std::vector<Thread*> ready;
  std::mt19937_64 rng;
  std::string error;
  int grid_waiting = 0, grid_threads = 0;
  void* scheduler = nullptr;  // the scheduler's saved stack pointer
};

std::mutex launch_mutex;
Launch* g_launch = nullptr;
Thread* g_cur = nullptr;
sigjmp_buf g_fault_jump;
std::string g_fault_message;
cudaError_t g_last_error = cudaSuccess;
int g_device = 0;
std::vector<LaunchRecord> g_records;
std::unordered_map<const void*, KernelInfo> g_kernels;

std::string who(const Thread& t) {
  return "block " + dims(t.block->idx.x, t.block->idx.y, t.block->idx.z) + ", thread " +
         dims(t.idx.x, t.idx.y, t.idx.z);
}

std::string where(const char* file, int line) {
  std::string f = file;
  size_t slash = f.find_last_of('/');
  return (slash == std::string::npos ? f : f.substr(slash + 1)) + ":" + std::to_string(line);
}

// Records the first violation and returns to the scheduler for good.
[[noreturn]] void fail(const std::string& what) {
  Launch& L = *g_launch;
  // every message names the thread that found the problem
  const std::string by = g_cur && what.find("block (") == std::string::npos ? ", in " + who(*g_cur) : "";
  if (L.error.empty()) L.error = "simt: " + what + by + " (kernel " + L.name + ")";
  if (g_cur) {
    simt_switch(&g_cur->sp, L.scheduler);
    std::abort();  // never resumed
  }
  throw Violation(L.error);
}

std::string mask_str(unsigned m) {
  char s[16];
  std::snprintf(s, sizeof s, "0x%08x", m);
  return s;
}

void yield() { simt_switch(&g_cur->sp, g_launch->scheduler); }

void make_ready(Thread& t) {
  t.state = State::ready;
  g_launch->ready.push_back(&t);
}

void entry() {
  (*g_launch->body)();
  Thread& t = *g_cur;
  Block& b = *t.block;
  if (b.at_barrier > 0) {
    for (Thread& o : b.threads)
      if (o.state == State::barrier)
        fail("barrier divergence: " + who(t) + " exits while " + who(o) + " waits at __syncthreads at " +
             where(o.file, o.line));
  }
  for (Thread& o : b.threads)
    if (o.warp == t.warp && o.state == State::warp && (o.mask >> t.lane & 1u))
      fail("warp collective at " + where(o.file, o.line) + " with mask " + mask_str(o.mask) + ": " + who(o) +
           " waits for lane " + std::to_string(t.lane) + ", which exits");
  if (g_launch->grid_waiting > 0) fail("grid.sync() divergence: " + who(t) + " exits while other threads wait");
  t.state = State::done;
  ++b.done;
  simt_switch(&t.sp, g_launch->scheduler);
  std::abort();
}

std::vector<char*>& stack_pool() {  // fiber stacks, kept for the next block
  static std::vector<char*> pool;
  return pool;
}

void start_thread(Thread& t) {
  if (t.stack == nullptr) {
    if (!stack_pool().empty()) {
      t.stack = stack_pool().back();
      stack_pool().pop_back();
    } else {
      // a PROT_NONE page below the stack turns an overflow into a reported fault
      char* m = static_cast<char*>(mmap(nullptr, kStackBytes + page_size(), PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
      if (m == MAP_FAILED) throw std::bad_alloc();
      mprotect(m, page_size(), PROT_NONE);
      t.stack = m;
    }
  }
  // What simt_switch pops, from the top: a fake return address for entry, entry as the return
  // address of the switch, six callee-saved registers, and the FP control words.
  uint64_t* top = reinterpret_cast<uint64_t*>(t.stack + page_size() + kStackBytes);
  top[-1] = 0;
  top[-2] = reinterpret_cast<uint64_t>(&entry);
  for (int r = 3; r <= 8; ++r) top[-r] = 0;
  uint32_t csr[2];
  asm volatile("stmxcsr %0" : "=m"(csr[0]));
  asm volatile("fnstcw %0" : "=m"(csr[1]));
  std::memcpy(&top[-9], csr, 8);
  t.sp = &top[-9];
}

void free_stack(Thread& t) {
  if (t.stack) stack_pool().push_back(t.stack);
  t.stack = nullptr;
}

// Sets b up as block `linear` of the launch: fresh threads, barrier state and shared memory.
void reset_block(Block& b, const Launch& L, unsigned linear) {
  const unsigned gx = L.grid.x, gy = L.grid.y;
  b.idx = {linear % gx, (linear / gx) % gy, linear / (gx * gy)};
  const int n = int(L.block.x * L.block.y * L.block.z);
  b.threads.resize(size_t(n));
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[size_t(i)];
    t.idx = {unsigned(i) % L.block.x, (unsigned(i) / L.block.x) % L.block.y, unsigned(i) / (L.block.x * L.block.y)};
    t.tid = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.block = &b;
    t.state = State::ready;
  }
  b.epoch = 1;
  b.warp_syncs.assign(size_t((n + 31) / 32), 0);
  b.done = b.at_barrier = 0;
  if (b.capacity != L.dynamic_smem + kStaticSmemLimit) {
    b.capacity = L.dynamic_smem + kStaticSmemLimit;
    b.storage.assign(b.capacity + 128, 0);
    b.arena = b.storage.data() + (128 - uintptr_t(b.storage.data()) % 128) % 128;
    b.shadow.assign(b.capacity, ByteShadow{});
  } else {
    std::fill(b.shadow.begin(), b.shadow.begin() + ptrdiff_t(b.used), ByteShadow{});
  }
  b.allocations.clear();
  b.offsets.clear();
  // The dynamic part starts the arena, aligned like extern __shared__ on a GPU.
  b.used = L.dynamic_smem;
  if (L.dynamic_smem) b.allocations.push_back({0, L.dynamic_smem, "dynamic shared memory"});
}

// Keeps the fault handler's alternate stack and the previous SIGSEGV/SIGBUS actions.
struct FaultHandler {
  struct sigaction old_segv, old_bus;
  stack_t old_stack;
  std::vector<char> stack = std::vector<char>(1 << 16);
  static void handle(int sig, siginfo_t* info, void*) {
    const void* addr = info->si_addr;
    if (g_launch && g_cur) {
      std::string what;
      if (const Buffer* b = buffer_around(addr)) {
        const intptr_t off = static_cast<const char*>(addr) - b->data;
        what = "out-of-bounds global access at " + hex(addr) + ": " +
               (off < 0 ? std::to_string(-off) + " bytes before the start"
                        : std::to_string(off - intptr_t(b->bytes)) + " bytes past the end") +
               " of '" + b->name + "' (" + std::to_string(b->bytes) + " bytes)";
      } else if (g_cur->stack && addr >= g_cur->stack && addr < g_cur->stack + page_size()) {
        what = "stack overflow (more than " + std::to_string(kStackBytes / 1024) + " KiB of locals)";
      } else {
        what = "invalid global access at " + hex(addr) + " (no tensor or allocation there)";
      }
      g_fault_message = "simt: " + what + " by " + who(*g_cur) + " (kernel " + g_launch->name + ")";
      siglongjmp(g_fault_jump, 1);
    }
    signal(sig, SIG_DFL);  // not ours: let it crash as it would have
  }
  FaultHandler() {
    stack_t ss{};
    ss.ss_sp = stack.data();
    ss.ss_size = stack.size();
    sigaltstack(&ss, &old_stack);
    struct sigaction sa {};
    sa.sa_sigaction = handle;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
  }
  ~FaultHandler() {
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_stack, nullptr);
  }
};

// Runs the launch's current blocks until every thread is done; throws on a violation.
void run_blocks(Launch& L) {
  L.ready.clear();
  L.grid_waiting = 0;
  L.grid_threads = 0;
  for (auto& b : L.blocks)
    for (Thread& t : b->threads) {
      start_thread(t);
      L.ready.push_back(&t);
      ++L.grid_threads;
    }
  if (sigsetjmp(g_fault_jump, 1) != 0) {
    g_cur = nullptr;
    L.error = g_fault_message;
    throw Violation(L.error);
  }
  while (!L.ready.empty() && L.error.empty()) {
    const size_t i = size_t(L.rng() % L.ready.size());
    Thread* t = L.ready[i];
    L.ready[i] = L.ready.back();
    L.ready.pop_back();
    g_cur = t;
    simt_switch(&L.scheduler, t->sp);
    g_cur = nullptr;
  }
  if (!L.error.empty()) throw Violation(L.error);
  for (auto& b : L.blocks)
    for (Thread& t : b->threads)
      if (t.state != State::done) {
        std::string what = t.state == State::barrier ? "__syncthreads at " + where(t.file, t.line)
                           : t.state == State::warp  ? "a warp collective at " + where(t.file, t.line)
                                                     : "grid.sync() at " + where(t.file, t.line);
        g_launch = &L;
        fail("deadlock: " + who(t) + " waits forever at " + what);
      }
  for (auto& b : L.blocks) {
    if (b->used - L.dynamic_smem > kStaticSmemLimit)
      fail("static shared memory of " + std::to_string(b->used - L.dynamic_smem) + " bytes exceeds 48 KiB");
    g_kernels[L.kernel].static_smem = int(b->used - L.dynamic_smem);
  }
}

unsigned full_lanes(const Block& b, int warp) {
  const int n = int(b.threads.size()) - warp * 32;
  return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::sync: return "__syncwarp";
    case WarpOp::shfl: return "__shfl_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::ballot: return "__ballot_sync";
    case WarpOp::all: return "__all_sync";
    case WarpOp::any: return "__any_sync";
    case WarpOp::wmma: return "a wmma operation";
  }
  return "?";
}

// The lane whose value lane `lane` receives, or -1 for its own value.
int shuffle_source(const Thread& t) {
  const int base = t.lane / t.width * t.width;
  switch (t.op) {
    case WarpOp::shfl: return base + ((t.arg % t.width) + t.width) % t.width;
    case WarpOp::shfl_xor: {
      const int s = t.lane ^ t.arg;
      return s < base + t.width ? s : -1;
    }
    case WarpOp::shfl_down: return t.lane + t.arg < base + t.width ? t.lane + t.arg : -1;
    case WarpOp::shfl_up: return t.lane - t.arg >= base ? t.lane - t.arg : -1;
    default: return -1;
  }
}

void complete_collective(Block& b, int warp, unsigned mask) {
  Thread* lanes[32] = {};
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1u) lanes[l] = &b.threads[size_t(warp * 32 + l)];
  uint64_t ballot = 0;
  int count = 0;
  for (int l = 0; l < 32; ++l)
    if (lanes[l]) {
      ballot |= uint64_t(lanes[l]->value != 0) << l;
      ++count;
    }
  for (int l = 0; l < 32; ++l) {
    Thread* t = lanes[l];
    if (!t) continue;
    switch (t->op) {
      case WarpOp::ballot: t->result = ballot; break;
      case WarpOp::all: t->result = __builtin_popcountll(ballot) == count; break;
      case WarpOp::any: t->result = ballot != 0; break;
      case WarpOp::sync:
      case WarpOp::wmma: t->result = 0; break;
      default: {
        const int src = shuffle_source(*t);
        if (src >= 0 && !(mask >> src & 1u))
          fail(std::string(op_name(t->op)) + " at " + where(t->file, t->line) + ": " + who(*t) +
               " reads lane " + std::to_string(src) + ", outside the mask " + mask_str(mask));
        t->result = src < 0 ? t->value : lanes[src]->value;
      }
    }
  }
  if (lanes[0] ? lanes[0]->op == WarpOp::sync : false) ++b.warp_syncs[size_t(warp)];
  for (Thread* t : lanes)
    if (t) make_ready(*t);
}

}  // namespace

void report(const std::string& what) { fail(what); }

// ---- identity ------------------------------------------------------------------------------

const uint3& thread_index() { return g_cur->idx; }
const uint3& block_index() { return g_cur->block->idx; }
const dim3& block_dim() { return g_launch->block; }
const dim3& grid_dim() { return g_launch->grid; }

Options& options() {
  static Options o;
  return o;
}

// ---- synchronization -----------------------------------------------------------------------

void maybe_yield() {
  if (!g_cur) return;
  make_ready(*g_cur);
  yield();
}

void syncthreads(const char* file, int line) {
  Thread& t = *g_cur;
  Block& b = *t.block;
  t.file = file;
  t.line = line;
  if (b.done > 0)
    for (Thread& o : b.threads)
      if (o.state == State::done)
        fail("barrier divergence: " + who(t) + " waits at __syncthreads at " + where(file, line) + ", but " +
             who(o) + " has exited");
  for (Thread& o : b.threads) {
    if (o.state == State::barrier && (std::strcmp(o.file, file) != 0 || o.line != line))
      fail("barrier divergence: " + who(t) + " waits at __syncthreads at " + where(file, line) + ", " + who(o) +
           " at " + where(o.file, o.line));
    if (o.warp == t.warp && o.state == State::warp && (o.mask >> t.lane & 1u))
      fail("barrier divergence: " + std::string(op_name(o.op)) + " at " + where(o.file, o.line) +
           " waits for lane " + std::to_string(t.lane) + ", which waits at __syncthreads at " + where(file, line));
  }
  t.state = State::barrier;
  if (++b.at_barrier == int(b.threads.size())) {
    b.at_barrier = 0;
    ++b.epoch;
    for (Thread& o : b.threads) make_ready(o);
  }
  yield();
}

void grid_sync(const char* file, int line) {
  Launch& L = *g_launch;
  Thread& t = *g_cur;
  if (!L.cooperative) fail("grid.sync() at " + where(file, line) + " in a launch that is not cooperative");
  for (auto& b : L.blocks)
    if (b->done > 0) fail("grid.sync() divergence: " + who(t) + " waits at " + where(file, line) + ", but a thread has exited");
  t.file = file;
  t.line = line;
  t.state = State::grid;
  if (++L.grid_waiting == L.grid_threads) {
    L.grid_waiting = 0;
    for (auto& b : L.blocks) {
      ++b->epoch;
      for (Thread& o : b->threads) make_ready(o);
    }
  }
  yield();
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file,
                         int line) {
  Thread& t = *g_cur;
  Block& b = *t.block;
  const std::string name = std::string(op_name(op)) + " at " + where(file, line);
  if (!(mask >> t.lane & 1u))
    fail(name + ": " + who(t) + " (lane " + std::to_string(t.lane) + ") calls it with mask " + mask_str(mask) +
         ", which leaves it out");
  if (mask & ~full_lanes(b, t.warp))
    fail(name + ": mask " + mask_str(mask) + " names lanes that this warp does not have");
  if (width < 1 || width > 32 || (width & (width - 1)))
    fail(name + ": width " + std::to_string(width) + " is not a power of two <= 32");
  t.op = op;
  t.mask = mask;
  t.value = value;
  t.arg = arg;
  t.width = width;
  t.file = file;
  t.line = line;
  t.state = State::warp;
  bool complete = true;
  for (int l = 0; l < 32; ++l) {
    const size_t i = size_t(t.warp * 32 + l);
    if (i >= b.threads.size() || l == t.lane) continue;
    Thread& o = b.threads[i];
    const bool named = mask >> l & 1u;
    const bool names_me = o.state == State::warp && (o.mask >> t.lane & 1u);
    if (!named && !names_me) continue;
    if (o.state == State::done)
      fail(name + ": the mask " + mask_str(mask) + " names lane " + std::to_string(l) + ", which has exited");
    if (o.state == State::barrier)
      fail("barrier divergence: " + name + " with mask " + mask_str(mask) + " names lane " + std::to_string(l) +
           ", which waits at __syncthreads at " + where(o.file, o.line));
    if (o.state == State::warp && (o.op != op || o.mask != mask || o.line != line))
      fail(name + " with mask " + mask_str(mask) + " by " + who(t) + " meets " + op_name(o.op) + " at " +
           where(o.file, o.line) + " with mask " + mask_str(o.mask) + " by " + who(o));
    if (o.state != State::warp) complete = false;
  }
  if (complete) complete_collective(b, t.warp, mask);
  yield();
  return t.result;
}

// ---- shared memory -------------------------------------------------------------------------

char* shared_alloc(const SharedSite& site, size_t bytes, size_t align) {
  Block& b = *g_cur->block;
  auto it = b.offsets.find(&site);
  if (it == b.offsets.end()) {
    size_t off = (b.used + align - 1) / align * align;
    if (off + bytes > b.capacity)
      fail("shared memory of the block exceeds " + std::to_string(b.capacity) + " bytes at '" + site.name + "'");
    b.allocations.push_back({off, bytes, site.name});
    b.used = off + bytes;
    it = b.offsets.emplace(&site, off).first;
  }
  return b.arena + it->second;
}

char* dynamic_shared() { return g_cur->block->arena; }

void shared_index_error(const SharedSite& site, int64_t index, size_t extent) {
  fail("shared array '" + std::string(site.name) + "': index " + std::to_string(index) + " outside [0, " +
       std::to_string(extent) + ") by " + who(*g_cur));
}

void shared_access(const void* p, size_t bytes, bool write) {
  Thread& t = *g_cur;
  Block& b = *t.block;
  const intptr_t off = static_cast<const char*>(p) - b.arena;
  const Allocation* home = nullptr;
  for (const Allocation& a : b.allocations)
    if (off >= intptr_t(a.offset) && off + intptr_t(bytes) <= intptr_t(a.offset + a.bytes)) home = &a;
  if (!home)
    fail("shared-memory access outside every shared allocation: " + std::to_string(bytes) + " bytes at offset " +
         std::to_string(off) + " by " + who(t) + " (the block has " + std::to_string(b.used) + " bytes)");
  const uint32_t wsync = b.warp_syncs[size_t(t.warp)];
  auto ordered = [&](int other, uint32_t other_wsync) {  // by a __syncwarp of this warp
    return other / 32 == t.warp && other_wsync != wsync;
  };
  auto race = [&](const char* kind, int other) {
    fail("shared-memory data race on '" + home->name + "' (byte " + std::to_string(off - intptr_t(home->offset)) +
         "): " + kind + " by " + who(t) + " and thread " + std::to_string(other) +
         " of the same block, with no barrier between them");
  };
  for (size_t i = 0; i < bytes; ++i) {
    ByteShadow& s = b.shadow[size_t(off) + i];
    if (write) {
      if (s.w_epoch == b.epoch && s.writer != t.tid && !ordered(s.writer, s.w_wsync)) race("write after write", s.writer);
      if (s.r_epoch == b.epoch && (s.reader == -2 || (s.reader != t.tid && !ordered(s.reader, s.r_wsync))))
        race("write after read", s.reader);
      s.w_epoch = b.epoch;
      s.writer = t.tid;
      s.w_wsync = wsync;
      s.written = true;
    } else {
      if (!s.written)
        fail("read of uninitialized shared memory '" + home->name + "' (byte " +
             std::to_string(off - intptr_t(home->offset)) + ") by " + who(t));
      if (s.w_epoch == b.epoch && s.writer != t.tid && !ordered(s.writer, s.w_wsync)) race("read after write", s.writer);
      if (s.r_epoch != b.epoch) {
        s.r_epoch = b.epoch;
        s.reader = t.tid;
        s.r_wsync = wsync;
      } else if (s.reader != t.tid) {
        s.reader = -2;
      }
    }
  }
  if (options().yield_rate > 0 &&
      std::uniform_real_distribution<double>(0, 1)(g_launch->rng) < options().yield_rate)
    maybe_yield();
}

// ---- global memory -------------------------------------------------------------------------

void* guarded_alloc(size_t bytes, size_t align, const std::string& name, bool fill_garbage) {
  const size_t page = page_size();
  const size_t pages = (bytes + page - 1) / page;
  const size_t map_bytes = (pages + 2) * page;
  char* map = static_cast<char*>(mmap(nullptr, map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (map == MAP_FAILED) throw std::bad_alloc();
  if (pages && mprotect(map + page, pages * page, PROT_READ | PROT_WRITE) != 0) {
    munmap(map, map_bytes);
    throw std::bad_alloc();
  }
  char* data = map + page;
  if (options().placement == Placement::end) {
    data = map + page + pages * page - bytes;
    data -= uintptr_t(data) % (align ? align : 1);
  }
  if (fill_garbage && bytes) std::memset(data, 0xff, bytes);
  buffers()[uintptr_t(map)] = Buffer{map, map_bytes, data, bytes, name, fill_garbage};
  return data;
}

void guarded_free(void* p) {
  const Buffer* b = buffer_around(p);
  if (!b || b->data != p) throw Violation("simt: free of " + hex(p) + ", which no allocation returned");
  char* map = b->map;
  const size_t bytes = b->map_bytes;
  buffers().erase(uintptr_t(map));
  munmap(map, bytes);
}

void check_range(const char* what, const void* p, size_t bytes) {
  const Buffer* b = buffer_around(p);
  const char* c = static_cast<const char*>(p);
  if (bytes == 0) return;
  if (!b || c < b->data || c + bytes > b->data + b->bytes)
    throw Violation(std::string("simt: ") + what + ": " + std::to_string(bytes) + " bytes at " + hex(p) +
                    " are not inside one device buffer" + (b ? " ('" + b->name + "', " + std::to_string(b->bytes) + " bytes)" : ""));
}

size_t live_device_allocations() {
  size_t n = 0;
  for (auto& [start, b] : buffers()) n += b.device;
  return n;
}

// ---- launches ------------------------------------------------------------------------------

void set_last_error(cudaError_t err) {
  if (g_last_error == cudaSuccess) g_last_error = err;
}

void launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem, uintptr_t stream,
            bool cooperative, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  KernelInfo& info = g_kernels[kernel];
  // what CUDA refuses before running anything
  if (blocks == 0 || threads == 0 || threads > kMaxThreads || grid.x > 2147483647u || grid.y > 65535 ||
      grid.z > 65535 || block.z > 64) {
    set_last_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (dynamic_smem > size_t(info.max_dynamic_smem)) {
    set_last_error(cudaErrorInvalidValue);
    return;
  }
  if (cooperative && blocks > uint64_t(options().multiprocessors) * options().blocks_per_sm) {
    set_last_error(cudaErrorCooperativeLaunchTooLarge);
    return;
  }
  g_records.push_back({name, grid, block, dynamic_smem, stream, cooperative});
  Launch L;
  L.name = name;
  L.kernel = kernel;
  L.grid = grid;
  L.block = block;
  L.dynamic_smem = dynamic_smem;
  L.cooperative = cooperative;
  L.body = &body;
  L.rng.seed(options().seed * 0x9e3779b97f4a7c15ull + g_records.size());
  FaultHandler handler;
  g_launch = &L;
  struct Reset {
    Launch& L;
    ~Reset() {
      for (auto& b : L.blocks)
        for (Thread& t : b->threads) free_stack(t);
      g_launch = nullptr;
      g_cur = nullptr;
    }
  } reset{L};
  if (cooperative) {
    for (unsigned i = 0; i < blocks; ++i) {
      L.blocks.push_back(std::make_unique<Block>());
      reset_block(*L.blocks.back(), L, i);
    }
    run_blocks(L);
    return;
  }
  std::vector<unsigned> order(blocks);
  for (unsigned i = 0; i < blocks; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), L.rng);
  L.blocks.push_back(std::make_unique<Block>());  // reused by every block in turn
  for (unsigned i : order) {
    reset_block(*L.blocks[0], L, i);
    run_blocks(L);
  }
}

const std::vector<LaunchRecord>& launches() { return g_records; }
void clear_launches() { g_records.clear(); }
void set_max_dynamic_smem(const void* kernel, int bytes) { g_kernels[kernel].max_dynamic_smem = bytes; }
int static_smem_of(const void* kernel) { return g_kernels[kernel].static_smem; }

}  // namespace simt

// ---- runtime API ---------------------------------------------------------------------------

using simt::g_last_error;

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t err) { return cudaGetErrorName(err); }
cudaError_t cudaGetLastError() {
  cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last_error; }
cudaError_t cudaGetDevice(int* device) {
  *device = simt::g_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device > 1) return cudaErrorInvalidDevice;
  simt::g_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 2;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(simt::kStaticSmemLimit); break;
    case cudaDevAttrMultiProcessorCount: *value = simt::options().multiprocessors; break;
    case cudaDevAttrCooperativeLaunch: *value = 1; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = simt::kSmemOptin; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  try {
    *p = simt::guarded_alloc(bytes, 8, "cudaMallocAsync(" + std::to_string(bytes) + ")", true);
  } catch (const std::bad_alloc&) {
    return cudaErrorMemoryAllocation;
  }
  return cudaSuccess;
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  if (p) simt::guarded_free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice)
    simt::check_range("cudaMemcpyAsync source", src, bytes);
  if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice)
    simt::check_range("cudaMemcpyAsync destination", dst, bytes);
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  simt::check_range("cudaMemsetAsync", p, bytes);
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t simt_func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value + simt::static_smem_of(kernel) > simt::kSmemOptin) return cudaErrorInvalidValue;
  simt::set_max_dynamic_smem(kernel, value);
  return cudaSuccess;
}
cudaError_t simt_func_get_attributes(cudaFuncAttributes* attr, const void* kernel) {
  attr->sharedSizeBytes = size_t(simt::static_smem_of(kernel));
  attr->maxThreadsPerBlock = simt::kMaxThreads;
  return cudaSuccess;
}
cudaError_t simt_occupancy(int* blocks, const void*, int, size_t) {
  *blocks = simt::options().blocks_per_sm;
  return cudaSuccess;
}
