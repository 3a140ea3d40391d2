//! DNS switching: while a region owns an endpoint, `<endpoint>.<zone>` answers that region's
//! records on every authoritative server.
//!
//! Each publish sends every server, in parallel, ONE RFC 2136 UPDATE for the zone: no
//! prerequisites, an update section that deletes the name's A, AAAA and CNAME RRsets and adds
//! the new set. One message is one transaction on the server, so a resolver never sees the
//! name empty or answering two regions at once. The message is signed with TSIG when a key
//! is configured, and the server's signed answer is verified.
//!
//! A server that cannot be reached (down, refused connection, no answer in time, SERVFAIL)
//! is retried with exponential backoff until the publish timeout; an answer that says an
//! operator must change something (unknown TSIG key, wrong secret, zone not served, update
//! not allowed) stops that server at once with a message naming the fix. An accepted update
//! is not yet the truth: a server is *confirmed* only once a plain query answers exactly the
//! new set.
//!
//! Message building and answer judging are pure functions (tested below); the shell around
//! them is a few lines of TCP/UDP with deadlines.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as WireAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Default TTL of published records: short, so resolvers follow a switch within seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Default time one publish may take, retries and confirmation included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// First wait after a transient failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait for one answer; a frozen server must not eat the whole publish timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Confirmation polls start fast (a primary applies an update in microseconds) and slow down.
const FIRST_CONFIRM_POLL: Duration = Duration::from_millis(10);
const MAX_CONFIRM_POLL: Duration = Duration::from_millis(50);
/// Allowed clock difference for TSIG (RFC 8945 recommends 300 s).
const TSIG_FUDGE: u16 = 300;
/// UDP payload size advertised in queries (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// `[traffic.dns]`: which zone and servers to update, and what each node's answer is.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsConfig {
    /// Absolute zone name, e.g. `db.example.com.`.
    pub zone: String,
    /// Authoritative servers; each is updated (in parallel) and confirmed on its own.
    pub servers: Vec<SocketAddr>,
    /// TTL of the published records, whole seconds ([`DEFAULT_TTL`]).
    pub ttl: Duration,
    pub tsig: Option<TsigKey>,
    /// How long one publish may take in all, retries included ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// Per node: what `<endpoint>.<zone>` answers while that node owns the endpoint.
    pub records: BTreeMap<String, RecordSet>,
}

/// A TSIG key as the DNS server knows it. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// The key's name on the server, e.g. `pgmesh.` (a trailing dot is optional).
    pub name: String,
    pub algorithm: TsigAlgorithm,
    /// The shared secret, already base64-decoded.
    pub secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

/// TSIG MAC algorithms pgmesh signs with (the two every current server supports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha512,
}

impl TsigAlgorithm {
    /// The name servers use in key files: `hmac-sha256`, `hmac-sha512`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    fn wire(self) -> WireAlgorithm {
        match self {
            TsigAlgorithm::HmacSha256 => WireAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha512 => WireAlgorithm::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TsigAlgorithm {
    type Err = DnsError;

    /// Accepts `hmac-sha256` / `hmac-sha512`, any case, with or without a trailing dot (the
    /// algorithm is a domain name on the wire).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
            "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
            _ => Err(DnsError::Config(format!(
                "unknown TSIG algorithm {s:?}: use \"hmac-sha256\" or \"hmac-sha512\""
            ))),
        }
    }
}

/// What a name answers: addresses (A and/or AAAA together) or one CNAME.
///
/// Equality is what a client would see: order and duplicates of addresses do not matter,
/// and CNAME targets compare case-insensitively with or without the trailing dot.
#[derive(Clone, Debug)]
pub enum RecordSet {
    Addresses(Vec<IpAddr>),
    Cname(String),
}

impl RecordSet {
    fn addresses(&self) -> BTreeSet<IpAddr> {
        match self {
            RecordSet::Addresses(list) => list.iter().copied().collect(),
            RecordSet::Cname(_) => BTreeSet::new(),
        }
    }
}

/// A CNAME target as compared: lower case, absolute.
fn canonical_target(target: &str) -> String {
    let t = target.trim().to_ascii_lowercase();
    if t.ends_with('.') {
        t
    } else {
        format!("{t}.")
    }
}

impl PartialEq for RecordSet {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (RecordSet::Addresses(_), RecordSet::Addresses(_)) => {
                self.addresses() == other.addresses()
            }
            (RecordSet::Cname(a), RecordSet::Cname(b)) => {
                canonical_target(a) == canonical_target(b)
            }
            _ => false,
        }
    }
}

impl Eq for RecordSet {}

impl fmt::Display for RecordSet {
    /// `A 10.0.0.5, AAAA 2001:db8::5` or `CNAME lb-a.example.net.`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordSet::Cname(target) => write!(f, "CNAME {}", canonical_target(target)),
            RecordSet::Addresses(_) => {
                let parts: Vec<String> = self
                    .addresses()
                    .iter()
                    .map(|ip| match ip {
                        IpAddr::V4(v4) => format!("A {v4}"),
                        IpAddr::V6(v6) => format!("AAAA {v6}"),
                    })
                    .collect();
                if parts.is_empty() {
                    f.write_str("no addresses")
                } else {
                    f.write_str(&parts.join(", "))
                }
            }
        }
    }
}

/// Why a DNS operation failed; [`DnsError::is_transient`] says whether retrying can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The configuration cannot work (bad name, unknown owner, empty record set): fix it.
    #[error("{0}")]
    Config(String),
    /// The server was not reached, did not answer in time, answered SERVFAIL or garbage:
    /// retry with backoff.
    #[error("{server}: {what}")]
    Transient { server: SocketAddr, what: String },
    /// The server answered, and its answer says an operator must change something.
    #[error("{server}: {what}")]
    NeedsOperator { server: SocketAddr, what: String },
}

impl DnsError {
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, DnsError::Transient { .. })
    }

    /// The message without the server's address, for places that name the server already.
    #[must_use]
    pub fn reason(&self) -> &str {
        match self {
            DnsError::Config(what)
            | DnsError::Transient { what, .. }
            | DnsError::NeedsOperator { what, .. } => what,
        }
    }
}

/// What one server did during a publish.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerOutcome {
    pub server: SocketAddr,
    /// The server answers exactly the new record set.
    pub confirmed: bool,
    /// UPDATE messages sent (retries included).
    pub attempts: u32,
    /// Time from publish start until the server answered the new set.
    pub confirmed_after: Option<Duration>,
    /// Why the server is not confirmed.
    pub error: Option<String>,
}

/// The result of [`DnsPublisher::publish`]: one [`ServerOutcome`] per configured server.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct DnsOutcome {
    pub endpoint: String,
    pub owner: String,
    /// The record name, `<endpoint>.<zone>`.
    pub name: String,
    /// The set published (`None` when the owner has no records configured).
    pub records: Option<RecordSet>,
    pub servers: Vec<ServerOutcome>,
    /// Time from publish start until the last server was confirmed or gave up.
    pub elapsed: Duration,
}

impl DnsOutcome {
    /// Every server answers the new set.
    #[must_use]
    pub fn done(&self) -> bool {
        !self.servers.is_empty() && self.servers.iter().all(|s| s.confirmed)
    }

    /// One line for logs and `pgmesh status`, naming each server that did not confirm and why.
    #[must_use]
    pub fn summary(&self) -> String {
        let what = self
            .records
            .as_ref()
            .map_or_else(|| "nothing".to_string(), ToString::to_string);
        let confirmed = self.servers.iter().filter(|s| s.confirmed).count();
        let mut line = format!(
            "dns {} -> {} ({what}): confirmed on {confirmed}/{} servers in {:.3}s",
            self.name,
            self.owner,
            self.servers.len(),
            self.elapsed.as_secs_f64()
        );
        let failed: Vec<String> = self
            .servers
            .iter()
            .filter(|s| !s.confirmed)
            .map(|s| {
                format!(
                    "{} after {} attempt{}: {}",
                    s.server,
                    s.attempts,
                    if s.attempts == 1 { "" } else { "s" },
                    s.error.as_deref().unwrap_or("not confirmed")
                )
            })
            .collect();
        if !failed.is_empty() {
            line.push_str("; not confirmed: ");
            line.push_str(&failed.join("; "));
        }
        line
    }
}

impl fmt::Display for DnsOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Publishes endpoints' answers to the configured authoritative servers.
#[derive(Clone, Debug)]
pub struct DnsPublisher {
    config: DnsConfig,
    /// The zone as a name, or why the configured zone is not one.
    zone: Result<Name, DnsError>,
    signer: Option<Signer>,
}

/// A TSIG signer with the key it was built from (for messages that name the key).
#[derive(Clone)]
struct Signer {
    key: TsigKey,
    tsig: Result<TSigner, DnsError>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key.fmt(f)
    }
}

impl DnsPublisher {
    /// Never fails: a zone or key the config parser let through but DNS cannot use is
    /// reported in every [`DnsOutcome`], where the operator looks.
    #[must_use]
    pub fn new(config: DnsConfig) -> DnsPublisher {
        let zone = parse_name(&config.zone)
            .map_err(|why| DnsError::Config(format!("traffic.dns.zone {:?}: {why}", config.zone)));
        let signer = config.tsig.clone().map(|key| {
            let tsig = parse_name(&key.name)
                .and_then(|name| {
                    TSigner::new(key.secret.clone(), key.algorithm.wire(), name, TSIG_FUDGE)
                        .map_err(|e| e.to_string())
                })
                .map_err(|why| DnsError::Config(format!("TSIG key {:?}: {why}", key.name)));
            Signer { key, tsig }
        });
        DnsPublisher {
            config,
            zone,
            signer,
        }
    }

    #[must_use]
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// Makes `<endpoint>.<zone>` answer `records[owner]` on every server (see the module
    /// docs), within the configured timeout.
    pub async fn publish(&self, endpoint: &str, owner: &str) -> DnsOutcome {
        let start = Instant::now();
        let name_text = format!("{endpoint}.{}", self.config.zone.trim_end_matches('.'));
        let records = self.config.records.get(owner).cloned();
        let servers = match self.prepare(endpoint, owner) {
            Ok((zone, name, set)) => {
                let jobs = self
                    .config
                    .servers
                    .iter()
                    .map(|&server| self.publish_to(server, &zone, &name, &set, start));
                futures_util::future::join_all(jobs).await
            }
            Err(e) => self
                .config
                .servers
                .iter()
                .map(|&server| ServerOutcome {
                    server,
                    confirmed: false,
                    attempts: 0,
                    confirmed_after: None,
                    error: Some(e.to_string()),
                })
                .collect(),
        };
        DnsOutcome {
            endpoint: endpoint.to_string(),
            owner: owner.to_string(),
            name: format!("{name_text}."),
            records,
            servers,
            elapsed: start.elapsed(),
        }
    }

    fn prepare(&self, endpoint: &str, owner: &str) -> Result<(Name, Name, RecordSet), DnsError> {
        let zone = self.zone.clone()?;
        if let Some(s) = &self.signer {
            s.tsig.clone()?;
        }
        let set = self.config.records.get(owner).cloned().ok_or_else(|| {
            DnsError::Config(format!(
                "no DNS records for owner {owner:?}: add traffic.dns.records.{owner} (known: {})",
                self.config
                    .records
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let empty = match &set {
            RecordSet::Addresses(list) => list.is_empty(),
            RecordSet::Cname(target) => target.trim().trim_end_matches('.').is_empty(),
        };
        if empty {
            return Err(DnsError::Config(format!(
                "traffic.dns.records.{owner} is empty: clients would have nothing to reach"
            )));
        }
        let name = parse_name(&format!("{endpoint}.{zone}"))
            .map_err(|why| DnsError::Config(format!("endpoint {endpoint:?}: {why}")))?;
        Ok((zone, name, set))
    }

    /// Update one server (retrying transient failures), then poll it until it answers `set`.
    async fn publish_to(
        &self,
        server: SocketAddr,
        zone: &Name,
        name: &Name,
        set: &RecordSet,
        start: Instant,
    ) -> ServerOutcome {
        let deadline = start + self.config.timeout;
        let mut out = ServerOutcome {
            server,
            confirmed: false,
            attempts: 0,
            confirmed_after: None,
            error: None,
        };
        let ttl = u32::try_from(self.config.ttl.as_secs()).unwrap_or(u32::MAX);
        let mut backoff = FIRST_BACKOFF;
        loop {
            out.attempts += 1;
            let limit = deadline
                .saturating_duration_since(Instant::now())
                .min(ATTEMPT_TIMEOUT);
            let result = match update_message(zone, name, set, ttl) {
                Ok(message) => self.send_update(server, zone, message, limit).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => break,
                Err(e) if e.is_transient() && Instant::now() + backoff < deadline => {
                    tracing::debug!(
                        %server,
                        attempt = out.attempts,
                        "dns update: {e}; retrying in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    out.error = Some(if e.is_transient() {
                        format!(
                            "{} (gave up after {:.1}s: another try would pass \
                             traffic.dns.timeout = {:?})",
                            e.reason(),
                            start.elapsed().as_secs_f64(),
                            self.config.timeout
                        )
                    } else {
                        e.reason().to_string()
                    });
                    return out;
                }
            }
        }
        let mut poll = FIRST_CONFIRM_POLL;
        loop {
            let limit = deadline
                .saturating_duration_since(Instant::now())
                .min(ATTEMPT_TIMEOUT);
            let last = match answer_of(server, name, limit).await {
                Ok(Some(got)) if got == *set => {
                    out.confirmed = true;
                    out.confirmed_after = Some(start.elapsed());
                    return out;
                }
                Ok(Some(got)) => format!("it still answers {got}"),
                Ok(None) => "it answers no A, AAAA or CNAME".to_string(),
                Err(e) if e.is_transient() => e.reason().to_string(),
                Err(e) => {
                    out.error = Some(format!(
                        "update accepted, but the check query failed: {}",
                        e.reason()
                    ));
                    return out;
                }
            };
            if Instant::now() + poll >= deadline {
                out.error = Some(format!(
                    "update accepted, but within {:?} (traffic.dns.timeout) {last}, not {set}",
                    self.config.timeout
                ));
                return out;
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(MAX_CONFIRM_POLL);
        }
    }

    /// Sends one (signed) UPDATE over TCP and judges the answer.
    async fn send_update(
        &self,
        server: SocketAddr,
        zone: &Name,
        mut message: Message,
        limit: Duration,
    ) -> Result<(), DnsError> {
        let mut verifier = None;
        let mut key = None;
        if let Some(signer) = &self.signer {
            let tsig = signer.tsig.clone()?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            verifier = message
                .finalize(&tsig, now)
                .map_err(|e| DnsError::Config(format!("cannot sign the update: {e}")))?;
            key = Some(&signer.key);
        }
        let bytes = encode(&message)?;
        let reply = exchange_tcp(server, &bytes, limit).await?;
        judge_update_answer(server, zone, key, message.id, &reply, verifier.as_mut())
    }
}

/// The zone section names the zone; no prerequisites; the update section deletes the name's
/// A, AAAA and CNAME RRsets (class ANY, RFC 2136 2.5.2) and adds `set` with `ttl`.
fn update_message(
    zone: &Name,
    name: &Name,
    set: &RecordSet,
    ttl: u32,
) -> Result<Message, DnsError> {
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    let mut zone_q = Query::query(zone.clone(), RecordType::SOA);
    zone_q.set_query_class(DNSClass::IN);
    message.add_zone(zone_q);
    for rtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        let mut delete = Record::update0(name.clone(), 0, rtype);
        delete.dns_class = DNSClass::ANY;
        message.add_update(delete);
    }
    match set {
        RecordSet::Addresses(_) => {
            for ip in set.addresses() {
                let data = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                message.add_update(Record::from_rdata(name.clone(), ttl, data));
            }
        }
        RecordSet::Cname(target) => {
            let target = parse_name(target)
                .map_err(|why| DnsError::Config(format!("CNAME target {target:?}: {why}")))?;
            message.add_update(Record::from_rdata(
                name.clone(),
                ttl,
                RData::CNAME(CNAME(target)),
            ));
        }
    }
    Ok(message)
}

/// A plain, non-recursive query for `name`/`rtype`.
fn query_message(name: &Name, rtype: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), rtype));
    message
        .edns
        .get_or_insert_with(Edns::new)
        .set_max_payload(EDNS_PAYLOAD)
        .set_version(0);
    message
}

/// Accepts an UPDATE answer only if it is NOERROR for our request and, when we signed, is
/// signed back with our key; every other answer becomes an error saying what to fix.
fn judge_update_answer(
    server: SocketAddr,
    zone: &Name,
    key: Option<&TsigKey>,
    id: u16,
    reply: &[u8],
    verifier: Option<&mut TSigVerifier>,
) -> Result<(), DnsError> {
    let transient = |what: String| DnsError::Transient { server, what };
    let operator = |what: String| DnsError::NeedsOperator { server, what };
    let answer = decode(server, reply)?;
    if answer.id != id || answer.message_type != MessageType::Response {
        return Err(transient(format!(
            "answer does not match the update (id {} vs {id})",
            answer.id
        )));
    }
    let key_text = key.map_or_else(
        || "none (traffic.dns.tsig_key not set)".to_string(),
        |k| format!("{} ({})", k.name, k.algorithm),
    );
    if let Some(tsig_error) = answer.signature().and_then(|sig| sig.data.error) {
        return Err(operator(match tsig_error {
            TsigError::BadKey => format!(
                "TSIG BADKEY: the server has no key {key_text}; make traffic.dns.tsig_key and \
                 tsig_algorithm match a key the server has for zone {zone}"
            ),
            TsigError::BadSig => format!(
                "TSIG BADSIG: the server rejected the signature of key {key_text}; \
                 traffic.dns.tsig_secret differs from the server's secret for that key"
            ),
            TsigError::BadTime => format!(
                "TSIG BADTIME: this host's clock and the server's differ by more than \
                 {TSIG_FUDGE} s; synchronize clocks (NTP)"
            ),
            other => format!("TSIG error {other:?} with key {key_text}"),
        }));
    }
    match answer.response_code {
        ResponseCode::NoError => {}
        ResponseCode::ServFail => {
            return Err(transient(format!(
                "SERVFAIL for the update of zone {zone} (the server could not apply it now)"
            )))
        }
        ResponseCode::NotAuth => {
            return Err(operator(format!(
                "NOTAUTH: the server is not authoritative for zone {zone} or does not allow \
                 updates with TSIG key {key_text}; serve the zone there and allow UPDATE with \
                 that key (Knot: acl action update; BIND: update-policy)"
            )))
        }
        ResponseCode::Refused => {
            return Err(operator(format!(
                "REFUSED: the server does not allow this update of zone {zone} (TSIG key \
                 {key_text}); allow UPDATE with that key, and check that the zone is a primary \
                 zone there"
            )))
        }
        ResponseCode::NotZone => {
            return Err(operator(format!(
                "NOTZONE: the name is not in zone {zone} on this server; check traffic.dns.zone"
            )))
        }
        other => {
            return Err(operator(format!(
                "{other} for the update of zone {zone} (TSIG key {key_text})"
            )))
        }
    }
    match (key, verifier, answer.signature().is_some()) {
        (Some(_), _, false) => Err(operator(format!(
            "the server accepted the update but did not sign its answer (key {key_text}); is \
             something between pgmesh and the server rewriting DNS?"
        ))),
        (_, Some(v), true) => v.verify(reply).map(|_| ()).map_err(|e| {
            operator(format!(
                "the server accepted the update but its answer's TSIG does not verify with key \
                 {key_text} ({e}); check the key's secret and algorithm"
            ))
        }),
        _ => Ok(()),
    }
}

/// What `name` answers on `server` now: its CNAME, or its A and AAAA records together, or
/// `None` when it has neither. Plain non-recursive queries over UDP (TCP if truncated).
pub async fn answer(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Option<RecordSet>, DnsError> {
    let name = parse_name(name).map_err(|why| DnsError::Config(format!("name {name:?}: {why}")))?;
    answer_of(server, &name, timeout).await
}

async fn answer_of(
    server: SocketAddr,
    name: &Name,
    timeout: Duration,
) -> Result<Option<RecordSet>, DnsError> {
    let (a, aaaa) = tokio::join!(
        query(server, name, RecordType::A, timeout),
        query(server, name, RecordType::AAAA, timeout)
    );
    let (a, aaaa) = (a?, aaaa?);
    Ok(answer_set(name, a.iter().chain(aaaa.iter())))
}

/// The record set `records` (answers to A and AAAA queries) give `name`.
fn answer_set<'a>(name: &Name, records: impl Iterator<Item = &'a Record>) -> Option<RecordSet> {
    let mut addresses = Vec::new();
    for record in records.filter(|r| r.name == *name) {
        match &record.data {
            RData::CNAME(target) => return Some(RecordSet::Cname(target.0.to_ascii())),
            RData::A(a) => addresses.push(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => addresses.push(IpAddr::V6(aaaa.0)),
            _ => {}
        }
    }
    (!addresses.is_empty()).then_some(RecordSet::Addresses(addresses))
}

/// One query's answer records; NXDOMAIN is an empty answer.
async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Vec<Record>, DnsError> {
    let message = query_message(name, rtype);
    let bytes = encode(&message)?;
    let mut reply = exchange_udp(server, &bytes, message.id, timeout).await?;
    if decode(server, &reply)?.truncation {
        reply = exchange_tcp(server, &bytes, timeout).await?;
    }
    let answer = decode(server, &reply)?;
    match answer.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(answer.answers),
        ResponseCode::ServFail => Err(DnsError::Transient {
            server,
            what: format!("SERVFAIL for {name} {rtype}"),
        }),
        other => Err(DnsError::NeedsOperator {
            server,
            what: format!(
                "{other} for {name} {rtype}: the server does not serve this name; check \
                 traffic.dns.zone and traffic.dns.servers"
            ),
        }),
    }
}

fn parse_name(text: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(text.trim()).map_err(|e| e.to_string())?;
    name.set_fqdn(true);
    Ok(name)
}

fn encode(message: &Message) -> Result<Vec<u8>, DnsError> {
    message
        .to_vec()
        .map_err(|e| DnsError::Config(format!("cannot encode the DNS message: {e}")))
}

fn decode(server: SocketAddr, bytes: &[u8]) -> Result<Message, DnsError> {
    Message::from_vec(bytes).map_err(|e| DnsError::Transient {
        server,
        what: format!("malformed DNS answer: {e}"),
    })
}

/// Maps a socket error to a transient error that says what it likely means.
fn io_error(server: SocketAddr, how: &str, e: &std::io::Error) -> DnsError {
    let hint = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => " (is the DNS server running?)",
        _ => "",
    };
    DnsError::Transient {
        server,
        what: format!("{how}: {e}{hint}"),
    }
}

fn timed_out(server: SocketAddr, how: &str, limit: Duration) -> DnsError {
    DnsError::Transient {
        server,
        what: format!("{how}: no answer within {limit:?}"),
    }
}

/// One request/answer over TCP (RFC 1035 4.2.2: two-byte length prefix).
async fn exchange_tcp(
    server: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> Result<Vec<u8>, DnsError> {
    let len = u16::try_from(request.len())
        .map_err(|_| DnsError::Config(format!("DNS message of {} bytes", request.len())))?;
    let talk = async {
        let mut stream = TcpStream::connect(server)
            .await
            .map_err(|e| io_error(server, "tcp connect", &e))?;
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(request);
        stream
            .write_all(&framed)
            .await
            .map_err(|e| io_error(server, "tcp send", &e))?;
        let reply_len = stream
            .read_u16()
            .await
            .map_err(|e| io_error(server, "tcp receive", &e))?;
        let mut reply = vec![0; usize::from(reply_len)];
        stream
            .read_exact(&mut reply)
            .await
            .map_err(|e| io_error(server, "tcp receive", &e))?;
        Ok(reply)
    };
    tokio::time::timeout(limit, talk)
        .await
        .unwrap_or_else(|_| Err(timed_out(server, "tcp", limit)))
}

/// One request/answer over UDP; datagrams with another id (late answers) are skipped.
async fn exchange_udp(
    server: SocketAddr,
    request: &[u8],
    id: u16,
    limit: Duration,
) -> Result<Vec<u8>, DnsError> {
    let talk = async {
        let local: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| io_error(server, "udp bind", &e))?;
        socket
            .connect(server)
            .await
            .map_err(|e| io_error(server, "udp connect", &e))?;
        socket
            .send(request)
            .await
            .map_err(|e| io_error(server, "udp send", &e))?;
        let mut buf = vec![0; 65_535];
        loop {
            let n = socket
                .recv(&mut buf)
                .await
                .map_err(|e| io_error(server, "udp receive", &e))?;
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    };
    tokio::time::timeout(limit, talk)
        .await
        .unwrap_or_else(|_| Err(timed_out(server, "udp", limit)))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::rr::rdata::tsig::{make_tsig_record, TSIG};

    use super::*;

    const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);

    fn name(s: &str) -> Name {
        parse_name(s).unwrap()
    }

    fn ips(list: &[&str]) -> RecordSet {
        RecordSet::Addresses(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn key() -> TsigKey {
        TsigKey {
            name: "pgmesh.".to_string(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: vec![7; 32],
        }
    }

    #[test]
    fn tsig_algorithms_parse_from_key_file_names() {
        let cases = [
            ("hmac-sha256", Some(TsigAlgorithm::HmacSha256)),
            ("HMAC-SHA256.", Some(TsigAlgorithm::HmacSha256)),
            (" hmac-sha512 ", Some(TsigAlgorithm::HmacSha512)),
            ("hmac-md5", None),
            ("sha256", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<TsigAlgorithm>().ok(), want, "{text:?}");
        }
        let err = "hmac-md5".parse::<TsigAlgorithm>().unwrap_err().to_string();
        assert!(err.contains("hmac-sha256"), "{err}");
        for alg in [TsigAlgorithm::HmacSha256, TsigAlgorithm::HmacSha512] {
            assert_eq!(alg.to_string().parse::<TsigAlgorithm>().unwrap(), alg);
        }
    }

    #[test]
    fn record_sets_compare_as_clients_see_them() {
        let cases = [
            (ips(&["10.0.0.1", "::1"]), ips(&["::1", "10.0.0.1"]), true),
            (ips(&["10.0.0.1", "10.0.0.1"]), ips(&["10.0.0.1"]), true),
            (ips(&["10.0.0.1"]), ips(&["10.0.0.1", "::1"]), false),
            (ips(&["10.0.0.1"]), ips(&["10.0.0.2"]), false),
            (
                RecordSet::Cname("LB.example.net".into()),
                RecordSet::Cname("lb.example.net.".into()),
                true,
            ),
            (
                RecordSet::Cname("a.example.net.".into()),
                RecordSet::Cname("b.example.net.".into()),
                false,
            ),
            (
                RecordSet::Cname("10.0.0.1.".into()),
                ips(&["10.0.0.1"]),
                false,
            ),
        ];
        for (a, b, same) in cases {
            assert_eq!(a == b, same, "{a:?} vs {b:?}");
            assert_eq!(b == a, same, "{b:?} vs {a:?}");
        }
        assert_eq!(
            ips(&["::11", "127.0.0.11"]).to_string(),
            "A 127.0.0.11, AAAA ::11"
        );
        assert_eq!(RecordSet::Cname("x.net".into()).to_string(), "CNAME x.net.");
    }

    #[test]
    fn tsig_key_debug_hides_the_secret() {
        let text = format!("{:?}", key());
        assert!(
            text.contains("<32 bytes>") && !text.contains("7, 7"),
            "{text}"
        );
    }

    #[test]
    fn update_deletes_all_address_and_cname_sets_then_adds_the_new_set() {
        let zone = name("db.example.com.");
        let app = name("app.db.example.com.");
        let m =
            update_message(&zone, &app, &ips(&["127.0.0.12", "::12", "127.0.0.12"]), 5).unwrap();
        assert_eq!(m.op_code, OpCode::Update);
        assert!(!m.recursion_desired);
        // Zone section: the zone's SOA, class IN.
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].name(), &zone);
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        assert_eq!(m.queries[0].query_class(), DNSClass::IN);
        // No prerequisites: the update is unconditional.
        assert!(m.answers.is_empty());
        let updates: Vec<(DNSClass, u32, String)> = m
            .authorities
            .iter()
            .map(|r| {
                assert_eq!(r.name, app);
                (r.dns_class, r.ttl, format!("{:?}", r.data))
            })
            .collect();
        assert_eq!(
            updates,
            vec![
                (DNSClass::ANY, 0, "Update0(A)".to_string()),
                (DNSClass::ANY, 0, "Update0(AAAA)".to_string()),
                (DNSClass::ANY, 0, "Update0(CNAME)".to_string()),
                (
                    DNSClass::IN,
                    5,
                    format!("{:?}", RData::A(A(Ipv4Addr::new(127, 0, 0, 12))))
                ),
                (
                    DNSClass::IN,
                    5,
                    format!(
                        "{:?}",
                        RData::AAAA(AAAA("::12".parse::<Ipv6Addr>().unwrap()))
                    )
                ),
            ]
        );
        // It survives the wire.
        let back = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(back.authorities.len(), 5);
    }

    #[test]
    fn update_to_a_cname_adds_one_absolute_cname() {
        let zone = name("db.example.com.");
        let app = name("app.db.example.com.");
        let m = update_message(
            &zone,
            &app,
            &RecordSet::Cname("lb-b.example.net".into()),
            30,
        )
        .unwrap();
        assert_eq!(m.authorities.len(), 4);
        let add = &m.authorities[3];
        assert_eq!((add.dns_class, add.ttl), (DNSClass::IN, 30));
        match &add.data {
            RData::CNAME(c) => assert_eq!(c.0.to_ascii(), "lb-b.example.net."),
            other => panic!("not a CNAME: {other:?}"),
        }
    }

    #[test]
    fn signed_update_carries_a_tsig_with_the_key_name() {
        let k = key();
        let signer = TSigner::new(
            k.secret.clone(),
            k.algorithm.wire(),
            name(&k.name),
            TSIG_FUDGE,
        )
        .unwrap();
        let mut m = update_message(
            &name("db.example.com."),
            &name("app.db.example.com."),
            &ips(&["10.0.0.1"]),
            5,
        )
        .unwrap();
        let verifier = m.finalize(&signer, 1_700_000_000).unwrap();
        assert!(verifier.is_some());
        let back = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        let sig = back.signature().expect("TSIG record");
        assert_eq!(sig.name, name("pgmesh."));
        assert_eq!(sig.data.algorithm, WireAlgorithm::HmacSha256);
        assert_eq!(sig.data.fudge, TSIG_FUDGE);
    }

    /// An UPDATE answer with `rcode` and, when given, an unsigned TSIG carrying `tsig_error`.
    fn answer_bytes(id: u16, rcode: ResponseCode, tsig_error: Option<TsigError>) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Response, OpCode::Update);
        m.metadata.response_code = rcode;
        m.add_zone(Query::query(name("db.example.com."), RecordType::SOA));
        if let Some(err) = tsig_error {
            let tsig = TSIG::new(
                WireAlgorithm::HmacSha256,
                0,
                300,
                vec![],
                id,
                Some(err),
                vec![],
            );
            m.set_signature(Box::new(make_tsig_record(name("pgmesh."), tsig)));
        }
        m.to_vec().unwrap()
    }

    fn judge(bytes: &[u8], signed: bool) -> Result<(), DnsError> {
        let k = key();
        judge_update_answer(
            SERVER,
            &name("db.example.com."),
            signed.then_some(&k),
            42,
            bytes,
            None,
        )
    }

    #[test]
    fn update_answers_are_classified_with_the_fix() {
        // (rcode, tsig error, transient?, words the message must contain)
        let cases: &[(ResponseCode, Option<TsigError>, bool, &[&str])] = &[
            (ResponseCode::ServFail, None, true, &["SERVFAIL"]),
            (
                ResponseCode::NotAuth,
                Some(TsigError::BadSig),
                false,
                &["TSIG", "BADSIG", "tsig_secret", "pgmesh."],
            ),
            (
                ResponseCode::NotAuth,
                Some(TsigError::BadKey),
                false,
                &["TSIG", "BADKEY", "tsig_key", "hmac-sha256"],
            ),
            (
                ResponseCode::NotAuth,
                Some(TsigError::BadTime),
                false,
                &["TSIG", "clock"],
            ),
            (
                ResponseCode::NotAuth,
                None,
                false,
                &["NOTAUTH", "db.example.com.", "allow UPDATE"],
            ),
            (
                ResponseCode::Refused,
                None,
                false,
                &["REFUSED", "allow UPDATE"],
            ),
            (
                ResponseCode::NotZone,
                None,
                false,
                &["NOTZONE", "traffic.dns.zone"],
            ),
            (ResponseCode::FormErr, None, false, &["Form"]),
        ];
        for (rcode, tsig, transient, words) in cases {
            let err = judge(&answer_bytes(42, *rcode, *tsig), true).unwrap_err();
            assert_eq!(err.is_transient(), *transient, "{rcode:?}/{tsig:?}: {err}");
            let text = err.to_string();
            assert!(text.starts_with("127.0.0.1:53: "), "{text}");
            for w in *words {
                assert!(text.contains(w), "{rcode:?}/{tsig:?}: {text:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn update_answers_must_match_and_be_signed_when_we_signed() {
        assert_eq!(
            judge(&answer_bytes(42, ResponseCode::NoError, None), false),
            Ok(())
        );
        let unsigned = judge(&answer_bytes(42, ResponseCode::NoError, None), true).unwrap_err();
        assert!(!unsigned.is_transient());
        assert!(unsigned.to_string().contains("did not sign"), "{unsigned}");
        let other_id = judge(&answer_bytes(7, ResponseCode::NoError, None), false).unwrap_err();
        assert!(other_id.is_transient(), "{other_id}");
        let garbage = judge(&[1, 2, 3], false).unwrap_err();
        assert!(garbage.is_transient(), "{garbage}");
    }

    #[test]
    fn answers_become_record_sets() {
        let app = name("app.db.example.com.");
        let a = |ip: [u8; 4]| Record::from_rdata(app.clone(), 5, RData::A(A(ip.into())));
        let aaaa = Record::from_rdata(app.clone(), 5, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)));
        let cname =
            Record::from_rdata(app.clone(), 5, RData::CNAME(CNAME(name("lb.example.net."))));
        let elsewhere =
            Record::from_rdata(name("lb.example.net."), 5, RData::A(A([9, 9, 9, 9].into())));
        let cases = [
            (vec![], None),
            (
                vec![a([10, 0, 0, 1]), aaaa.clone()],
                Some(ips(&["10.0.0.1", "::1"])),
            ),
            (vec![aaaa], Some(ips(&["::1"]))),
            // A server that chases the CNAME inside its zones adds the target's records.
            (
                vec![cname, elsewhere.clone()],
                Some(RecordSet::Cname("lb.example.net.".into())),
            ),
            (vec![elsewhere], None),
        ];
        for (records, want) in cases {
            assert_eq!(answer_set(&app, records.iter()), want, "{records:?}");
        }
    }

    fn outcome(servers: Vec<ServerOutcome>) -> DnsOutcome {
        DnsOutcome {
            endpoint: "app".into(),
            owner: "b".into(),
            name: "app.db.example.com.".into(),
            records: Some(ips(&["127.0.0.12"])),
            servers,
            elapsed: Duration::from_millis(1500),
        }
    }

    fn server(port: u16, confirmed: bool, error: Option<&str>) -> ServerOutcome {
        ServerOutcome {
            server: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            confirmed,
            attempts: 3,
            confirmed_after: confirmed.then_some(Duration::from_millis(20)),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn summary_names_servers_that_did_not_confirm() {
        let done = outcome(vec![server(1, true, None), server(2, true, None)]);
        assert!(done.done());
        assert_eq!(
            done.summary(),
            "dns app.db.example.com. -> b (A 127.0.0.12): confirmed on 2/2 servers in 1.500s"
        );
        let half = outcome(vec![
            server(1, true, None),
            server(2, false, Some("tcp connect: refused")),
        ]);
        assert!(!half.done());
        assert!(
            half.summary().ends_with("1/2 servers in 1.500s; not confirmed: 127.0.0.1:2 after 3 attempts: tcp connect: refused"),
            "{}",
            half.summary()
        );
        assert!(!outcome(vec![]).done());
    }

    #[tokio::test]
    async fn unknown_owner_and_bad_names_are_reported_in_the_outcome() {
        let config = DnsConfig {
            zone: "db.example.com.".into(),
            servers: vec![SERVER],
            ttl: DEFAULT_TTL,
            tsig: None,
            timeout: DEFAULT_TIMEOUT,
            records: BTreeMap::from([("a".to_string(), ips(&["10.0.0.1"]))]),
        };
        let unknown = DnsPublisher::new(config.clone()).publish("app", "z").await;
        assert!(!unknown.done());
        assert_eq!(unknown.servers[0].attempts, 0);
        let why = unknown.servers[0].error.as_deref().unwrap();
        assert!(
            why.contains("traffic.dns.records.z") && why.contains("known: a"),
            "{why}"
        );
        let bad = DnsPublisher::new(config).publish("bad name", "a").await;
        let why = bad.servers[0].error.as_deref().unwrap();
        assert!(why.contains("endpoint \"bad name\""), "{why}");
    }
}
