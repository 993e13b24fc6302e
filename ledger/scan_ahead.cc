#include "ledger/scan_ahead.h"

#include <atomic>
#include <cassert>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ledger/kv_store.h"
#include "ledger/ledger.h"
#include "ledger/prefetch.h"
#include "ledger/thread_name.h"

namespace keyledger {
namespace {

constexpr size_t kWordBytes = sizeof(uint64_t);
constexpr size_t kChunkWords = kScanAheadChunkBytes / kWordBytes;

size_t WordsFor(size_t bytes) { return (bytes + kWordBytes - 1) / kWordBytes; }

// Copied pairs, each key and value at a word-aligned offset.
struct Chunk {
  struct Item {
    size_t key_offset;  // bytes into words
    size_t key_size;
    size_t value_offset;
    size_t value_size;
  };
  std::vector<uint64_t> words;
  size_t used_words = 0;
  std::vector<Item> items;
  // With decode_calls: decoded[i] is what was made of item i, once
  // decoded_ready[i]: by the reading thread, or by the consumer ahead of
  // time (ScanDecodedCallEvents' lookahead); else the consumer decodes it when
  // it reaches it. Its views point into `words`, which do not move while
  // items are held.
  std::vector<DecodedCallEvent> decoded;
  std::vector<uint8_t> decoded_ready;

  bool Fits(size_t words_needed) const { return used_words + words_needed <= words.size(); }
  size_t Copy(std::string_view bytes) {
    const size_t offset = used_words * kWordBytes;
    if (!bytes.empty()) std::memcpy(words.data() + used_words, bytes.data(), bytes.size());
    used_words += WordsFor(bytes.size());
    return offset;
  }
  std::string_view View(size_t offset, size_t size) const {
    return std::string_view(reinterpret_cast<const char*>(words.data()) + offset, size);
  }
  void Clear() {
    used_words = 0;
    items.clear();
  }
};

}  // namespace

struct ScanAhead::Rep {
  ScanFn scan;
  bool decode_calls = false;  // OfLedgerDecodingCalls: fill Chunk::decoded
  size_t decode_backlog_chunks = 0;  // OfLedgerDecodingCalls' argument

  std::mutex mu;  // guards what follows, up to `current`
  std::condition_variable cv;
  std::deque<std::unique_ptr<Chunk>> full;   // read, in order, not yet consumed
  // full.size(), read by the reading thread without the lock: it decodes
  // only while the consumer has at least decode_backlog_chunks chunks
  // waiting, and otherwise leaves the decoding to the consumer.
  std::atomic<size_t> full_chunks{0};
  std::vector<std::unique_ptr<Chunk>> free;  // consumed, for reuse
  size_t chunks = 0;                         // allocated so far, <= kScanAheadChunks
  bool cancel = false;
  bool done = false;
  Status status;

  std::unique_ptr<Chunk> current;  // the consumer's; not guarded
  size_t next_item = 0;

  std::thread thread;  // last: starts once the members above exist

  // Returns an empty chunk, or nullptr once cancelled.
  std::unique_ptr<Chunk> TakeFree() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return cancel || !free.empty() || chunks < kScanAheadChunks; });
    if (cancel) return nullptr;
    if (!free.empty()) {
      std::unique_ptr<Chunk> chunk = std::move(free.back());
      free.pop_back();
      return chunk;
    }
    ++chunks;
    auto chunk = std::make_unique<Chunk>();
    chunk->words.resize(kChunkWords);
    chunk->items.reserve(kScanAheadChunkItemsMax);
    if (decode_calls) {
      chunk->decoded.resize(kScanAheadChunkItemsMax);
      chunk->decoded_ready.resize(kScanAheadChunkItemsMax);
    }
    return chunk;
  }

  void Publish(std::unique_ptr<Chunk> chunk) {
    {
      std::lock_guard<std::mutex> lock(mu);
      full.push_back(std::move(chunk));
      full_chunks.store(full.size(), std::memory_order_relaxed);
    }
    cv.notify_all();
  }

  // Calls fn(chunk, i) for the next items in order until fn returns false
  // (that item is consumed) or the scan ends; returns as ScanAhead::Scan.
  // Consumer side only.
  template <typename ItemFn>
  Status ScanItems(const ItemFn& fn) {
    for (;;) {
      if (current == nullptr || next_item == current->items.size()) {
        std::unique_lock<std::mutex> lock(mu);
        if (current != nullptr) {
          current->Clear();
          free.push_back(std::move(current));
          cv.notify_all();
        }
        cv.wait(lock, [&] { return !full.empty() || done; });
        if (full.empty()) return status;
        current = std::move(full.front());
        full.pop_front();
        full_chunks.store(full.size(), std::memory_order_relaxed);
        next_item = 0;
      }
      if (!fn(*current, next_item++)) return Status::Ok();
    }
  }

  // `stored` is word-aligned (Chunk::Copy), so is the body 32 bytes into it.
  static void Decode(std::string_view stored, DecodedCallEvent* out) {
    Hash hash;
    std::string_view body;
    out->status = SplitStoredValue(stored, &hash, &body);
    if (out->status.ok()) out->status = DecodeCallEvent(body, &out->view);
  }

  void Run() {
    std::unique_ptr<Chunk> chunk = TakeFree();
    Status scanned;
    if (chunk != nullptr) {
      scanned = scan([&](std::string_view key, std::string_view value) {
        const size_t words_needed = WordsFor(key.size()) + WordsFor(value.size());
        if (chunk->items.size() == kScanAheadChunkItemsMax ||
            (!chunk->items.empty() && !chunk->Fits(words_needed))) {
          Publish(std::move(chunk));
          chunk = TakeFree();
          if (chunk == nullptr) return false;  // cancelled
        }
        if (!chunk->Fits(words_needed)) chunk->words.resize(chunk->used_words + words_needed);
        Chunk::Item item;
        item.key_size = key.size();
        item.key_offset = chunk->Copy(key);
        item.value_size = value.size();
        item.value_offset = chunk->Copy(value);
        if (decode_calls) {
          // Whichever thread is ahead decodes: this one while the consumer
          // has chunks waiting, the consumer when it has caught up.
          const size_t i = chunk->items.size();
          chunk->decoded_ready[i] =
              full_chunks.load(std::memory_order_relaxed) >= decode_backlog_chunks;
          if (chunk->decoded_ready[i]) {
            Decode(chunk->View(item.value_offset, item.value_size), &chunk->decoded[i]);
          }
        }
        chunk->items.push_back(item);
        return true;
      });
      if (chunk != nullptr && !chunk->items.empty()) Publish(std::move(chunk));
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      status = scanned;
      done = true;
    }
    cv.notify_all();
  }
};

ScanAhead::ScanAhead(ScanFn scan) : ScanAhead(std::move(scan), /*decode_calls=*/false, 0) {}

ScanAhead::ScanAhead(ScanFn scan, bool decode_calls, size_t decode_backlog_chunks)
    : rep_(std::make_unique<Rep>()) {
  rep_->scan = std::move(scan);
  rep_->decode_calls = decode_calls;
  rep_->decode_backlog_chunks = decode_backlog_chunks;
  rep_->thread = std::thread([rep = rep_.get()] {
    NameThisThread("kl-scan-ahead");
    rep->Run();
  });
}

ScanAhead::~ScanAhead() {
  {
    std::lock_guard<std::mutex> lock(rep_->mu);
    rep_->cancel = true;
  }
  rep_->cv.notify_all();
  rep_->thread.join();
}

namespace {

ScanAhead::ScanFn LedgerScan(const Ledger& ledger, uint64_t from, uint64_t to) {
  return [&ledger, from, to](const ScanAhead::Emit& emit) {
    return ledger.ScanRaw(from, to, [&](uint64_t sequence, std::string_view value) {
      std::string key;
      AppendBigEndian64(&key, sequence);  // 8 bytes: fits the small-string buffer
      return emit(key, value);
    });
  };
}

}  // namespace

std::unique_ptr<ScanAhead> ScanAhead::OfLedger(const Ledger& ledger, uint64_t from, uint64_t to) {
  return std::make_unique<ScanAhead>(LedgerScan(ledger, from, to));
}

std::unique_ptr<ScanAhead> ScanAhead::OfLedgerDecodingCalls(const Ledger& ledger, uint64_t from,
                                                            uint64_t to,
                                                            size_t decode_backlog_chunks) {
  // The constructor is private: no make_unique.
  return std::unique_ptr<ScanAhead>(
      new ScanAhead(LedgerScan(ledger, from, to), true, decode_backlog_chunks));
}

std::unique_ptr<ScanAhead> ScanAhead::OfStore(const KvStore& store, int cf, std::string_view start,
                                              std::string_view end) {
  return std::make_unique<ScanAhead>(
      [&store, cf, start = std::string(start), end = std::string(end)](const Emit& emit) {
        return store.Scan(cf, start, end, emit, ScanKind::kBulk);
      });
}

Status ScanAhead::Scan(const Emit& fn) {
  return rep_->ScanItems([&](const Chunk& chunk, size_t i) {
    const Chunk::Item& item = chunk.items[i];
    return fn(chunk.View(item.key_offset, item.key_size),
              chunk.View(item.value_offset, item.value_size));
  });
}

Status ScanAhead::ScanEvents(const std::function<bool(uint64_t, std::string_view)>& fn) {
  return Scan([&](std::string_view key, std::string_view value) {
    assert(key.size() == 8);  // OfLedger's keys
    return fn(DecodeBigEndian64(key.data()), value);
  });
}

namespace {

// Fetches the ids a decoded call or denial points to (the other kinds'
// views are left over from an earlier event, so they are not followed).
void PrefetchIds(const DecodedCallEvent& event, uint16_t call_kind, uint16_t denial_kind) {
  if (!event.status.ok()) return;
  if (event.view.body_kind == call_kind) {
    PrefetchRead(event.view.call.workspace_id.data());
    PrefetchRead(event.view.call.key_id.data());
  } else if (event.view.body_kind == denial_kind) {
    PrefetchRead(event.view.denial.workspace_id.data());
    PrefetchRead(event.view.denial.key_id.data());
  }
}

}  // namespace

Status ScanAhead::ScanDecodedCallEvents(const DecodedEventFn& fn, const LookaheadFn& ahead) {
  assert(rep_->decode_calls);
  const uint16_t call_kind = ApiCallRecordedBodyKind();
  const uint16_t denial_kind = AuthorizationDeniedBodyKind();
  return rep_->ScanItems([&](Chunk& chunk, size_t i) {
    // The reading thread wrote each item on the other core: without fetching
    // ahead, the consumer's first touch of an item's decoded view, of the ids
    // it points to and of the stored value's hash each misses the cache. The
    // views of the nearer item were fetched kScanAheadPrefetchItems ago.
    const size_t near = i + kScanAheadPrefetchItems;
    const size_t far = near + kScanAheadPrefetchItems;
    if (far < chunk.items.size() && chunk.decoded_ready[far]) {
      const auto* view = reinterpret_cast<const char*>(&chunk.decoded[far]);
      for (size_t line = 0; line < sizeof(DecodedCallEvent); line += 64) {
        PrefetchRead(view + line);
      }
    }
    if (near < chunk.items.size()) {
      if (chunk.decoded_ready[near]) PrefetchIds(chunk.decoded[near], call_kind, denial_kind);
      PrefetchRead(chunk.View(chunk.items[near].value_offset, 0).data());
    }
    const size_t later = i + kScanAheadLookaheadItems;
    if (ahead && later < chunk.items.size()) {
      if (!chunk.decoded_ready[later]) {  // decoded once, now
        const Chunk::Item& next = chunk.items[later];
        Rep::Decode(chunk.View(next.value_offset, next.value_size), &chunk.decoded[later]);
        chunk.decoded_ready[later] = 1;
      }
      ahead(chunk.decoded[later]);
    }
    const Chunk::Item& item = chunk.items[i];
    assert(item.key_size == 8);  // OfLedger's keys
    const std::string_view value = chunk.View(item.value_offset, item.value_size);
    if (!chunk.decoded_ready[i]) Rep::Decode(value, &chunk.decoded[i]);
    return fn(DecodeBigEndian64(chunk.View(item.key_offset, 8).data()), value, chunk.decoded[i]);
  });
}

}  // namespace keyledger
