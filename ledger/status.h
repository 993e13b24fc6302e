// Errors as values. Every fallible operation in keyledger returns a Status or a
// Result<T>; exceptions from third-party libraries are caught in the adapter
// that calls them and turned into one of these codes.
//
// Thread safety: Status and Result are values; distinct objects may be used
// concurrently, one object needs external synchronization.
#pragma once

#include <cassert>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace keyledger {

enum class Code : uint8_t {
  kOk = 0,
  kNotFound,            // the named thing does not exist (or is deleted)
  kConflict,            // optimistic concurrency: expected version did not match
  kInvalidArgument,     // caller error; `field` names the offending input
  kFailedPrecondition,  // valid request, but the state forbids it now
  kPermissionDenied,    // authenticated, but not allowed
  kUnauthenticated,     // no or bad credentials
  kResourceExhausted,   // a limit was reached (rate limit, size limit)
  kCorruption,          // stored data failed verification
  kIOError,             // the storage layer failed
  kUnavailable,         // shutting down or temporarily unable to serve
  kInternal,            // a bug: an invariant that should hold did not
};

// Returns a stable lower-case name for `code`, e.g. "not_found".
std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK

  static Status Ok() { return Status(); }
  static Status NotFound(std::string msg, std::string field = {}) {
    return Status(Code::kNotFound, std::move(msg), std::move(field));
  }
  static Status Conflict(std::string msg) { return Status(Code::kConflict, std::move(msg)); }
  static Status InvalidArgument(std::string msg, std::string field = {}) {
    return Status(Code::kInvalidArgument, std::move(msg), std::move(field));
  }
  static Status FailedPrecondition(std::string msg, std::string field = {}) {
    return Status(Code::kFailedPrecondition, std::move(msg), std::move(field));
  }
  static Status PermissionDenied(std::string msg, std::string field = {}) {
    return Status(Code::kPermissionDenied, std::move(msg), std::move(field));
  }
  static Status Unauthenticated(std::string msg) {
    return Status(Code::kUnauthenticated, std::move(msg));
  }
  static Status ResourceExhausted(std::string msg, std::string field = {}) {
    return Status(Code::kResourceExhausted, std::move(msg), std::move(field));
  }
  // `sequence` is the ledger sequence where the corruption was found, 0 if unknown.
  static Status Corruption(std::string msg, uint64_t sequence = 0) {
    Status s(Code::kCorruption, std::move(msg));
    s.sequence_ = sequence;
    return s;
  }
  static Status IOError(std::string msg) { return Status(Code::kIOError, std::move(msg)); }
  static Status Unavailable(std::string msg) { return Status(Code::kUnavailable, std::move(msg)); }
  static Status Internal(std::string msg) { return Status(Code::kInternal, std::move(msg)); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // The input at fault, e.g. "name" or "calls[3].occurred_at"; empty if none.
  const std::string& field() const { return field_; }
  // For kCorruption: the first bad sequence, 0 if unknown.
  uint64_t sequence() const { return sequence_; }

  // "not_found: key k_1 does not exist (field: key)".
  std::string ToString() const;

 private:
  Status(Code code, std::string msg, std::string field = {})
      : code_(code), message_(std::move(msg)), field_(std::move(field)) {}

  Code code_ = Code::kOk;
  std::string message_;
  std::string field_;
  uint64_t sequence_ = 0;
};

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : data_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : data_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(data_).ok() && "Result needs a value or an error");
  }

  bool ok() const { return std::holds_alternative<T>(data_); }
  // REQUIRES: !ok().
  const Status& status() const {
    assert(!ok());
    return std::get<Status>(data_);
  }
  // Returns OK when a value is held.
  Status ToStatus() const { return ok() ? Status::Ok() : std::get<Status>(data_); }
  // REQUIRES: ok().
  T& value() & {
    assert(ok());
    return std::get<T>(data_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<T>(data_);
  }
  T&& value() && {
    assert(ok());
    return std::get<T>(std::move(data_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> data_;
};

}  // namespace keyledger

// Returns early from the enclosing function when `expr` is not OK.
#define KL_RETURN_IF_ERROR(expr)               \
  do {                                         \
    ::keyledger::Status kl_status_ = (expr);   \
    if (!kl_status_.ok()) return kl_status_;   \
  } while (0)

#define KL_CONCAT_INNER(a, b) a##b
#define KL_CONCAT(a, b) KL_CONCAT_INNER(a, b)
// Declares `lhs` from a Result's value, or returns its Status.
#define KL_ASSIGN_OR_RETURN(lhs, expr) \
  KL_ASSIGN_OR_RETURN_IMPL(KL_CONCAT(kl_result_, __LINE__), lhs, expr)
#define KL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
