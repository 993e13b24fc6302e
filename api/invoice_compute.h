// The computation of one workspace's invoice for one month, from the key
// state, the ledger and the usage projection, shared by the invoice run and
// by ReproduceInvoice, which recomputes an issued invoice from the log alone.
//
// Thread safety: stateless functions over thread-safe inputs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "billing/calendar.h"
#include "ledger/clock.h"
#include "ledger/ledger.h"
#include "ledger/status.h"
#include "projections/call_projections.h"
#include "projections/key_state.h"

namespace keyledger {

// Reads the invoice event `ref` points at. Corruption if it is not one.
Result<InvoiceIssued> ReadInvoice(const Ledger& ledger, const InvoiceRef& ref);

// Reads version `version` of plan `plan_id`. NotFound if unknown.
Result<PricePlanPublished> ReadPlan(const KeyState& state, const Ledger& ledger,
                                    const std::string& plan_id, uint32_t version);

// Returns invoice number `number` of workspace `ws` for `month`, priced with
// the plan in force at the month's end, covering the usage in `usage_reader` as of
// `covers_sequence`, with adjustment lines for late usage of months invoiced
// before; std::nullopt when the workspace had no plan at the month's end.
// REQUIRES: `usage_reader` covers covers_sequence for the whole call (folds held).
// Returns the errors of BuildInvoice, ReadPlan and ReadInvoice.
Result<std::optional<InvoiceIssued>> ComputeInvoice(const KeyState& state, const Ledger& ledger,
                                                    const UsageReader& usage_reader,
                                                    const WorkspaceView& ws,
                                                    const BillingMonth& month, uint64_t number,
                                                    uint64_t covers_sequence);

// Recomputes the issued invoice `ref` from the ledger alone: the key state
// folded up to just before the invoice, the usage folded in memory
// (FoldUsage) up to its covers_sequence, as the live projection folds it.
// Finance and auditors compare the result byte for byte with the stored one.
Result<InvoiceIssued> ReproduceInvoice(const Ledger& ledger, const InvoiceRef& ref);

// The same for the invoices of one run at once (one append: consecutive
// sequences, one covers_sequence), with one fold of the usage instead of one
// per invoice; each is computed with the key state just before it, as
// ReproduceInvoice does. Returns them in the order of `refs`.
// REQUIRES: refs non-empty, their sequences consecutive.
// Returns InvalidArgument (field "refs") when they cover different positions,
// and the errors of ReproduceInvoice.
Result<std::vector<InvoiceIssued>> ReproduceInvoiceRun(const Ledger& ledger,
                                                       const std::vector<InvoiceRef>& refs);

}  // namespace keyledger
