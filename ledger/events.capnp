# keyledger's persistent event format.
#
# EVOLUTION RULES (see docs/events.md): fields and union members are only ever
# added, with the next free ordinal. Never renumber, retype or remove a field,
# never reorder or reuse an enum value. A stored event must decode forever.
@0x8a992eac0be72a75;

$import "/capnp/c++.capnp".namespace("keyledger::schema");

# The envelope around every domain event. The stored RocksDB value is
# hash (32 bytes) || the Cap'n Proto message of this struct; see
# docs/architecture.md for why the hash lives outside the message.
struct Envelope {
  sequence @0 :UInt64;        # global, dense, starts at 1
  recordedAtUs @1 :Int64;     # UTC microseconds since the Unix epoch
  streamId @2 :Text;          # e.g. "ws/ws_…", "key/key_…"
  streamVersion @3 :UInt64;   # 1-based position within the stream
  eventId @4 :Data;           # 16 bytes, unique forever (idempotency)
  actor @5 :Text;             # "operator", "token/tok_…", "system", "gateway"
  prevHash @6 :Data;          # 32 bytes: hash of sequence-1 (zeros for 1)

  body :union {
    workspaceCreated @7 :WorkspaceState;
    workspaceChanged @8 :WorkspaceState;
    securityGroupCreated @9 :SecurityGroupState;
    securityGroupChanged @10 :SecurityGroupState;
    securityGroupDeleted @11 :SecurityGroupDeleted;
    keyCreated @12 :KeyCreated;
    keyRenamed @13 :KeyRenamed;
    keyDescriptionChanged @14 :KeyDescriptionChanged;
    keySecurityGroupChanged @15 :KeySecurityGroupChanged;
    keyLoggingSwitched @16 :KeyLoggingSwitched;
    keyRotated @17 :KeyRotated;
    keyDeleted @18 :KeyDeleted;
    workspaceTokenCreated @19 :WorkspaceTokenCreated;
    workspaceTokenRevoked @20 :WorkspaceTokenRevoked;
    alarmCreated @21 :AlarmSpec;
    alarmChanged @22 :AlarmSpec;
    alarmDeleted @23 :AlarmDeleted;
    alarmStateChanged @24 :AlarmStateChanged;
    notificationDelivered @25 :NotificationAttempt;
    notificationFailed @26 :NotificationAttempt;
    apiCallRecorded @27 :ApiCallRecorded;
    authorizationDenied @28 :AuthorizationDenied;
    pricePlanPublished @29 :PricePlanPublished;
    invoiceIssued @30 :InvoiceIssued;
    operatorTokenSet @31 :OperatorTokenSet;
  }
}

# Created and changed carry the full new values of every mutable field.
struct WorkspaceState {
  workspaceId @0 :Text;
  name @1 :Text;
  tpsLimit @2 :UInt32;
  billingTimezone @3 :Text;   # IANA name
  pricePlanId @4 :Text;       # empty: no plan
}

struct SecurityGroupState {
  workspaceId @0 :Text;
  groupId @1 :Text;
  name @2 :Text;
  ipAllow @3 :List(Text);      # CIDRs, IPv4 and IPv6, canonical form
  originAllow @4 :List(Text);  # "https://app.example.com", "https://*.example.com"
}

struct SecurityGroupDeleted {
  workspaceId @0 :Text;
  groupId @1 :Text;
}

struct KeyCreated {
  workspaceId @0 :Text;
  keyId @1 :Text;
  name @2 :Text;
  description @3 :Text;
  securityGroupId @4 :Text;
  secretHash @5 :Data;         # 32 bytes; the secret itself is never stored
}

struct KeyRenamed {
  workspaceId @0 :Text;
  keyId @1 :Text;
  name @2 :Text;
}

struct KeyDescriptionChanged {
  workspaceId @0 :Text;
  keyId @1 :Text;
  description @2 :Text;
}

struct KeySecurityGroupChanged {
  workspaceId @0 :Text;
  keyId @1 :Text;
  securityGroupId @2 :Text;
}

struct KeyLoggingSwitched {
  workspaceId @0 :Text;
  keyId @1 :Text;
  enabled @2 :Bool;
}

struct KeyRotated {
  workspaceId @0 :Text;
  keyId @1 :Text;
  newSecretHash @2 :Data;           # 32 bytes
  oldSecretValidUntilUs @3 :Int64;  # UTC µs; <= rotation time means "at once"
}

struct KeyDeleted {
  workspaceId @0 :Text;
  keyId @1 :Text;
}

struct WorkspaceTokenCreated {
  workspaceId @0 :Text;
  tokenId @1 :Text;
  tokenHash @2 :Data;          # 32 bytes
}

struct WorkspaceTokenRevoked {
  workspaceId @0 :Text;
  tokenId @1 :Text;
}

struct OperatorTokenSet {
  tokenHash @0 :Data;          # 32 bytes; generated on first start
}

enum AlarmMetric {
  calls @0;
  errors @1;
  errorRate @2;
  latencyP95Ms @3;
  units @4;
  spendMinor @5;
}

enum Comparator {
  greater @0;
  greaterOrEqual @1;
  less @2;
  lessOrEqual @3;
}

enum MissingData {
  missing @0;
  ignore @1;
  breaching @2;
  notBreaching @3;
}

struct AlarmChannel {
  type :union {
    email @0 :Text;            # recipient address
    webhook @1 :Webhook;
  }
  struct Webhook {
    url @0 :Text;
    secret @1 :Text;           # signing secret (Standard Webhooks)
  }
}

struct AlarmSpec {
  workspaceId @0 :Text;
  keyId @1 :Text;
  alarmId @2 :Text;
  name @3 :Text;
  metric @4 :AlarmMetric;
  comparator @5 :Comparator;
  thresholdMicros @6 :Int64;   # threshold × 10^6, exact
  periodSeconds @7 :UInt32;
  evaluationPeriods @8 :UInt32;
  datapointsToAlarm @9 :UInt32;
  missingData @10 :MissingData;
  channels @11 :List(AlarmChannel);
}

struct AlarmDeleted {
  workspaceId @0 :Text;
  keyId @1 :Text;
  alarmId @2 :Text;
}

enum AlarmState {
  insufficientData @0;
  ok @1;
  alarm @2;
}

struct AlarmStateChanged {
  workspaceId @0 :Text;
  keyId @1 :Text;
  alarmId @2 :Text;
  from @3 :AlarmState;
  to @4 :AlarmState;
  valueMicros @5 :Int64;
  evaluatedAtUs @6 :Int64;
  reason @7 :Text;
}

struct NotificationAttempt {
  workspaceId @0 :Text;
  alarmId @1 :Text;
  notificationId @2 :Text;     # the webhook-id; stable across retries
  channelIndex @3 :UInt32;
  attempt @4 :UInt32;          # 1-based
  httpStatus @5 :UInt32;       # 0 when no response
  error @6 :Text;
  nextAttemptAtUs @7 :Int64;   # 0: no further attempt
}

struct Header {
  name @0 :Text;
  value @1 :Text;
}

struct HttpExcerpt {
  headers @0 :List(Header);    # secrets already redacted
  bodyExcerpt @1 :Data;        # at most 4 KiB
}

struct ApiCallRecorded {
  requestId @0 :Text;
  workspaceId @1 :Text;
  keyId @2 :Text;
  occurredAtUs @3 :Int64;
  method @4 :Text;
  path @5 :Text;
  status @6 :UInt16;
  latencyUs @7 :UInt64;
  units @8 :UInt64;            # billable quantity
  requestBytes @9 :UInt64;
  responseBytes @10 :UInt64;
  clientIp @11 :Text;
  origin @12 :Text;
  logged @13 :Bool;            # true when the key's logging was on
  request @14 :HttpExcerpt;    # present only when logged
  response @15 :HttpExcerpt;
}

enum DenialReason {
  unknownKey @0;
  revokedSecret @1;
  ipNotAllowed @2;
  originNotAllowed @3;
  rateLimited @4;
  malformedCredentials @5;
}

struct AuthorizationDenied {
  requestId @0 :Text;
  workspaceId @1 :Text;        # empty when the key is unidentifiable
  keyId @2 :Text;              # empty when the key is unidentifiable
  occurredAtUs @3 :Int64;
  reason @4 :DenialReason;
  clientIp @5 :Text;
  origin @6 :Text;
  count @7 :UInt64;            # > 1 for aggregated unattributable denials
}

enum PricingMode {
  graduated @0;
  volume @1;
}

struct PriceTier {
  upTo @0 :UInt64;             # inclusive upper bound of the tier
  unbounded @1 :Bool;          # true: no upper bound (upTo ignored)
  unitPriceMicros @2 :Int64;   # price per unit in millionths of a minor unit
}

struct PricePlanPublished {
  planId @0 :Text;
  version @1 :UInt32;
  currency @2 :Text;           # ISO 4217
  currencyExponent @3 :UInt8;  # minor-unit digits, e.g. USD 2, KRW 0
  metric @4 :Text;             # "units"
  mode @5 :PricingMode;
  tiers @6 :List(PriceTier);
  monthlyFeeMinor @7 :Int64;
}

struct InvoiceLine {
  kind @0 :Text;               # "tier", "monthly_fee", "adjustment"
  description @1 :Text;
  quantity @2 :UInt64;
  unitPriceMicros @3 :Int64;
  amountMinor @4 :Int64;
  month @5 :Text;              # YYYY-MM the line prices (adjustments: original month)
}

struct KeyUsage {
  keyId @0 :Text;
  quantity @1 :UInt64;
}

struct InvoiceIssued {
  workspaceId @0 :Text;
  month @1 :Text;              # YYYY-MM in the workspace's billing time zone
  invoiceNumber @2 :UInt64;    # gap-free, global
  currency @3 :Text;
  lines @4 :List(InvoiceLine);
  keyUsage @5 :List(KeyUsage);
  subtotalMinor @6 :Int64;
  totalMinor @7 :Int64;
  coversSequence @8 :UInt64;   # ledger position the invoice accounts up to
  digest @9 :Data;             # 32 bytes over the invoice content
  planId @10 :Text;
  planVersion @11 :UInt32;
}
