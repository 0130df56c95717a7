// Propagation helpers for absl::Status / absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SHERD_CONCAT_INNER_(a, b) a##b
#define SHERD_CONCAT_(a, b) SHERD_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    ::absl::Status _sherd_status = (expr);           \
    if (!_sherd_status.ok()) return _sherd_status;   \
  } while (0)

// ASSIGN_OR_RETURN(auto x, FunctionReturningStatusOr());
#define ASSIGN_OR_RETURN(lhs, expr) \
  SHERD_ASSIGN_OR_RETURN_IMPL_(SHERD_CONCAT_(_sherd_or_, __LINE__), lhs, expr)
#define SHERD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()
