#include "api/invoice_compute.h"

#include <cassert>

#include <map>
#include <memory>

#include "billing/invoicing.h"
#include "projections/key_state_store.h"

namespace keyledger {
namespace {

// What earlier invoices of a workspace billed for one month's usage.
struct Billed {
  uint64_t quantity = 0;
  int64_t amount_minor = 0;
  std::string plan_id;  // the plan of that month's own invoice
  uint32_t plan_version = 0;
};

Result<std::map<std::string, Billed>> BilledByMonth(const KeyState& state, const Ledger& ledger,
                                                    const std::string& workspace_id) {
  std::map<std::string, Billed> billed;
  for (const InvoiceRef& ref : state.ListInvoices(workspace_id)) {
    KL_ASSIGN_OR_RETURN(InvoiceIssued earlier, ReadInvoice(ledger, ref));
    Billed& own = billed[earlier.month];
    own.plan_id = earlier.plan_id;
    own.plan_version = earlier.plan_version;
    for (const auto& line : earlier.lines) {
      if (line.kind != "tier" && line.kind != "adjustment") continue;
      billed[line.month].quantity += line.quantity;
      billed[line.month].amount_minor += line.amount_minor;
    }
  }
  return billed;
}

}  // namespace

Result<InvoiceIssued> ReadInvoice(const Ledger& ledger, const InvoiceRef& ref) {
  KL_ASSIGN_OR_RETURN(Event e, ledger.Read(ref.sequence));
  const auto* invoice = std::get_if<InvoiceIssued>(&e.body);
  if (invoice == nullptr) return Status::Corruption("not an invoice", ref.sequence);
  return *invoice;
}

Result<PricePlanPublished> ReadPlan(const KeyState& state, const Ledger& ledger,
                                    const std::string& plan_id, uint32_t version) {
  auto versions = state.PlanVersions(plan_id);
  if (version == 0 || version > versions.size()) {
    return Status::NotFound("no version " + std::to_string(version) + " of plan " + plan_id);
  }
  KL_ASSIGN_OR_RETURN(Event e, ledger.Read(versions[version - 1].sequence));
  const auto* plan = std::get_if<PricePlanPublished>(&e.body);
  if (plan == nullptr) return Status::Corruption("not a price plan", e.sequence);
  return *plan;
}

Result<std::optional<InvoiceIssued>> ComputeInvoice(const KeyState& state, const Ledger& ledger,
                                                    const UsageReader& usage_reader,
                                                    const WorkspaceView& ws,
                                                    const BillingMonth& month, uint64_t number,
                                                    uint64_t covers_sequence) {
  using Out = std::optional<InvoiceIssued>;
  KL_ASSIGN_OR_RETURN(auto bounds, MonthBoundsUs(month, ws.billing_timezone));
  auto in_force = state.PlanInForce(ws.id, bounds.second);
  if (!in_force) return Out();  // no plan at the month's end: nothing to bill
  KL_ASSIGN_OR_RETURN(PricePlanPublished plan,
                      ReadPlan(state, ledger, in_force->first, in_force->second.version));
  const WorkspaceUsage usage = usage_reader.UsageFor(ws.id, month);
  KL_ASSIGN_OR_RETURN(auto billed, BilledByMonth(state, ledger, ws.id));
  std::vector<std::unique_ptr<PricePlanPublished>> adjustment_plans;
  std::vector<Adjustment> adjustments;
  for (const auto& [month_key, b] : billed) {
    if (month_key >= month.ToString() || b.plan_id.empty()) continue;
    KL_ASSIGN_OR_RETURN(BillingMonth earlier, ParseBillingMonth(month_key, "month"));
    const uint64_t corrected = usage_reader.UsageFor(ws.id, earlier).total;
    if (corrected <= b.quantity) continue;
    KL_ASSIGN_OR_RETURN(PricePlanPublished p, ReadPlan(state, ledger, b.plan_id, b.plan_version));
    adjustment_plans.push_back(std::make_unique<PricePlanPublished>(std::move(p)));
    adjustments.push_back(
        Adjustment{earlier, adjustment_plans.back().get(), corrected, b.quantity, b.amount_minor});
  }
  InvoiceInput input{ws.id, month, number, covers_sequence, &plan, usage.keys, adjustments};
  KL_ASSIGN_OR_RETURN(InvoiceIssued invoice, BuildInvoice(input));
  return Out(std::move(invoice));
}

Result<InvoiceIssued> ReproduceInvoice(const Ledger& ledger, const InvoiceRef& ref) {
  KL_ASSIGN_OR_RETURN(auto reproduced, ReproduceInvoiceRun(ledger, {ref}));
  assert(reproduced.size() == 1);
  return std::move(reproduced.front());
}

Result<std::vector<InvoiceIssued>> ReproduceInvoiceRun(const Ledger& ledger,
                                                       const std::vector<InvoiceRef>& refs) {
  assert(!refs.empty());
  std::vector<InvoiceIssued> stored;
  stored.reserve(refs.size());
  for (size_t i = 0; i < refs.size(); i++) {
    assert(i == 0 || refs[i].sequence == refs[i - 1].sequence + 1);
    KL_ASSIGN_OR_RETURN(InvoiceIssued invoice, ReadInvoice(ledger, refs[i]));
    if (!stored.empty() && invoice.covers_sequence != stored.front().covers_sequence) {
      return Status::InvalidArgument("the invoices of one run cover one position", "refs");
    }
    stored.push_back(std::move(invoice));
  }
  const uint64_t covers = stored.front().covers_sequence;
  KL_ASSIGN_OR_RETURN(std::unique_ptr<KeyState> state,
                      RebuildKeyState(ledger, refs.front().sequence - 1));
  if (covers > ledger.head().sequence) {
    return Status::Corruption("the invoice covers sequence " + std::to_string(covers) +
                                  ", beyond the ledger head",
                              refs.front().sequence);
  }
  KL_ASSIGN_OR_RETURN(std::unique_ptr<UsageReader> usage, FoldUsage(ledger, covers));
  std::vector<InvoiceIssued> reproduced;
  reproduced.reserve(refs.size());
  for (size_t i = 0; i < refs.size(); i++) {
    if (i > 0) {
      // The key state just before invoice i: with the run's earlier invoices.
      KL_ASSIGN_OR_RETURN(Event previous, ledger.Read(refs[i - 1].sequence));
      KL_RETURN_IF_ERROR(state->Apply(previous));
    }
    auto ws = state->FindWorkspace(stored[i].workspace_id);
    if (!ws) return Status::Corruption("invoice of an unknown workspace", refs[i].sequence);
    KL_ASSIGN_OR_RETURN(BillingMonth month, ParseBillingMonth(stored[i].month, "month"));
    KL_ASSIGN_OR_RETURN(auto invoice, ComputeInvoice(*state, ledger, *usage, *ws, month,
                                                     stored[i].invoice_number, covers));
    if (!invoice) {
      return Status::Corruption("no plan in force for an issued invoice", refs[i].sequence);
    }
    reproduced.push_back(std::move(*invoice));
  }
  return reproduced;
}

}  // namespace keyledger
