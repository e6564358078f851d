//! Order data of the simulator: the statuses, the order record and its JSON form, the seeded
//! generator of the initial order book, and the price formula.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

/// `created_at` of the newest generated order (2026-01-01T00:00:00Z, in ms since the epoch):
/// a fixed base keeps the data identical for the same seed, whatever the clock says.
pub(super) const BASE_MS: u64 = 1_767_225_600_000;

/// Generated orders are this far apart in time, oldest first.
const SPACING_MS: u64 = 60_000;

/// The lifecycle states of an MES order, as the MES spells them on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Status {
    Submitted,
    PriceCalculated,
    ManufacturingApproved,
    ManufacturingStarted,
    ManufacturingCompleted,
    Shipped,
    Delivered,
    Cancelled,
}

impl Status {
    /// Every status in lifecycle order, so counts and per-status indexes can be arrays.
    pub(super) const ALL: [Status; 8] = [
        Status::Submitted,
        Status::PriceCalculated,
        Status::ManufacturingApproved,
        Status::ManufacturingStarted,
        Status::ManufacturingCompleted,
        Status::Shipped,
        Status::Delivered,
        Status::Cancelled,
    ];

    /// The wire name (SCREAMING_CASE), used in JSON and query strings.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::Submitted => "SUBMITTED",
            Status::PriceCalculated => "PRICE_CALCULATED",
            Status::ManufacturingApproved => "MANUFACTURING_APPROVED",
            Status::ManufacturingStarted => "MANUFACTURING_STARTED",
            Status::ManufacturingCompleted => "MANUFACTURING_COMPLETED",
            Status::Shipped => "SHIPPED",
            Status::Delivered => "DELIVERED",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// Parses a wire name exactly (case-sensitive, like the MES); `None` for anything else.
    pub(super) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Position in [`Status::ALL`], for array-indexed per-status data.
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// One order as the simulator keeps it; rendered to JSON by [`Order::to_json`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Order {
    pub(super) id: u64,
    pub(super) status: Status,
    pub(super) created_ms: u64,
    pub(super) updated_ms: u64,
    pub(super) version: u64,
    pub(super) customer: String,
    pub(super) product: String,
    pub(super) material: String,
    pub(super) quantity: u32,
    pub(super) model_hash: String,
}

/// The wire shape of an order; borrowed so rendering copies nothing but the output.
#[derive(Serialize)]
struct OrderView<'a> {
    id: u64,
    number: String,
    status: &'static str,
    created_at: String,
    updated_at: String,
    version: u64,
    customer: &'a str,
    product: &'a str,
    material: &'a str,
    quantity: u32,
    price: Option<f64>,
    model_hash: &'a str,
}

impl Order {
    /// The price the MES shows: none until it has been calculated (i.e. while SUBMITTED).
    pub(super) fn price(&self) -> Option<f64> {
        (self.status != Status::Submitted)
            .then(|| price(&self.model_hash, &self.material, self.quantity))
    }

    /// The order's JSON; the store caches it so reads only clone a `Bytes`.
    pub(super) fn to_json(&self) -> Bytes {
        let view = OrderView {
            id: self.id,
            number: order_number(self.id),
            status: self.status.as_str(),
            created_at: format_ms(self.created_ms),
            updated_at: format_ms(self.updated_ms),
            version: self.version,
            customer: &self.customer,
            product: &self.product,
            material: &self.material,
            quantity: self.quantity,
            price: self.price(),
            model_hash: &self.model_hash,
        };
        // Serializing plain strings and numbers cannot fail.
        Bytes::from(serde_json::to_vec(&view).unwrap_or_default())
    }
}

/// The human-facing order number, e.g. `ORD-000042`.
pub(super) fn order_number(id: u64) -> String {
    format!("ORD-{id:06}")
}

/// RFC 3339 UTC with millisecond precision, the MES's timestamp format.
pub(super) fn format_ms(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Wall-clock now in ms since the epoch (0 if the clock is before 1970).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Deterministic price in currency units (two decimals) from what the MES prices on.
///
/// Same inputs, same price, on every machine: the gateway's cache tests rely on it.
pub(super) fn price(model_hash: &str, material: &str, quantity: u32) -> f64 {
    let h = fnv1a(&[model_hash.as_bytes(), b"\0", material.as_bytes()]);
    let unit_cents = 250 + h % 20_000;
    let setup_cents = 5_000 + (h >> 24) % 45_000;
    let gross = setup_cents + unit_cents * u64::from(quantity);
    let percent = match quantity {
        1000.. => 85,
        100..=999 => 92,
        10..=99 => 97,
        _ => 100,
    };
    // At most ~9e15 cents, exactly representable in an f64.
    (gross * percent / 100) as f64 / 100.0
}

/// FNV-1a over the concatenated parts: a tiny, stable hash (std's hashers are not stable).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// SplitMix64: a hand-rolled generator so the data never changes with a `rand` upgrade.
pub(super) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub(super) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One element of a non-empty slice.
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let i = usize::try_from(self.below(items.len() as u64)).unwrap_or_default();
        items.get(i).copied().unwrap_or_default()
    }

    /// A 64-hex-digit string, shaped like the SHA-256 of a CAD model.
    pub(super) fn hex256(&mut self) -> String {
        (0..4)
            .map(|_| format!("{:016x}", self.next_u64()))
            .collect()
    }
}

/// Status mix of the generated history: mostly finished orders, a few hundred open ones.
const STATUS_WEIGHTS: [(Status, u64); 8] = [
    (Status::Delivered, 55),
    (Status::Shipped, 12),
    (Status::Cancelled, 8),
    (Status::ManufacturingCompleted, 5),
    (Status::ManufacturingStarted, 5),
    (Status::ManufacturingApproved, 7),
    (Status::PriceCalculated, 4),
    (Status::Submitted, 4),
];

const CUSTOMERS: [&str; 16] = [
    "Acme Precision Tooling GmbH",
    "Nordic Hydraulics AB",
    "Bavaria Motorsport Components",
    "Helvetia Medical Devices AG",
    "Rotterdam Marine Engineering BV",
    "Lyon Aerospace Fixtures SAS",
    "Milano Robotics S.r.l.",
    "Silesia Agricultural Machinery",
    "Cascade Fluid Power Inc.",
    "Great Lakes Automation LLC",
    "Tatra Rail Systems a.s.",
    "Baltic Wind Service OU",
    "Iberia Packaging Machines S.L.",
    "Danube Food Processing Kft.",
    "Highland Optics Ltd",
    "Alpine Cable Cars GmbH",
];

const PRODUCTS: [&str; 12] = [
    "Hydraulic manifold block HM-220",
    "Gearbox housing GH-40, machined",
    "Robot gripper finger set RGF-3",
    "Pump impeller PI-125, balanced",
    "Mounting bracket MB-17, anodized",
    "Bearing cap BC-90 with grease port",
    "Valve body VB-32, pressure tested",
    "Sensor enclosure SE-5, IP67",
    "Drive shaft coupling DSC-60",
    "Heat sink plate HSP-200",
    "Conveyor roller end cap CR-48",
    "Fixture base plate FBP-400",
];

const MATERIALS: [&str; 8] = [
    "Aluminium 6061-T6",
    "Aluminium 7075-T651",
    "Stainless steel 1.4404",
    "Tool steel 1.2379",
    "Brass CW614N",
    "Titanium Grade 5",
    "POM-C natural",
    "PEEK natural",
];

/// Default fields of an order created without them.
pub(super) const DEFAULT_CUSTOMER: &str = "Walk-in Customer";
/// See [`DEFAULT_CUSTOMER`].
pub(super) const DEFAULT_PRODUCT: &str = "Custom machined part";
/// See [`DEFAULT_CUSTOMER`].
pub(super) const DEFAULT_MATERIAL: &str = "Aluminium 6061-T6";
/// See [`DEFAULT_CUSTOMER`].
pub(super) const DEFAULT_QUANTITY: u32 = 1;

/// The initial order book: ids `1..=count`, higher id = newer, the newest at [`BASE_MS`].
pub(super) fn generate(count: usize, seed: u64) -> Vec<Order> {
    let mut rng = SplitMix64::new(seed);
    let count = count as u64;
    (1..=count)
        .map(|id| {
            let created_ms = BASE_MS.saturating_sub((count - id).saturating_mul(SPACING_MS));
            generate_one(&mut rng, id, created_ms)
        })
        .collect()
}

fn generate_one(rng: &mut SplitMix64, id: u64, created_ms: u64) -> Order {
    Order {
        id,
        status: pick_status(rng),
        created_ms,
        updated_ms: created_ms,
        version: 1,
        customer: rng.pick(&CUSTOMERS).to_owned(),
        product: rng.pick(&PRODUCTS).to_owned(),
        material: rng.pick(&MATERIALS).to_owned(),
        quantity: pick_quantity(rng),
        model_hash: rng.hex256(),
    }
}

fn pick_status(rng: &mut SplitMix64) -> Status {
    let total: u64 = STATUS_WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut roll = rng.below(total);
    for (status, weight) in STATUS_WEIGHTS {
        if roll < weight {
            return status;
        }
        roll -= weight;
    }
    Status::Delivered
}

/// Mostly small batches, some medium, a few large runs.
fn pick_quantity(rng: &mut SplitMix64) -> u32 {
    let q = match rng.below(10) {
        0..=5 => 1 + rng.below(20),
        6..=8 => 20 + rng.below(180),
        _ => 200 + rng.below(4_800),
    };
    u32::try_from(q).unwrap_or(DEFAULT_QUANTITY)
}

/// The model hash of an order created over the API: derived from the seed and the id, so a
/// rerun with the same requests produces the same data.
pub(super) fn created_model_hash(seed: u64, id: u64) -> String {
    SplitMix64::new(seed ^ id.rotate_left(32) ^ 0x5eed_0000_c0ff_ee00).hex256()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_new_year_2026() {
        assert_eq!(format_ms(BASE_MS), "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(Status::ALL[s.index()], s);
        }
        assert_eq!(Status::parse("submitted"), None);
        assert_eq!(Status::parse(""), None);
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        assert_eq!(generate(200, 42), generate(200, 42));
        assert_ne!(generate(200, 42), generate(200, 43));
    }

    #[test]
    fn generated_orders_are_spaced_back_from_base() {
        let orders = generate(5, 1);
        let ids: Vec<u64> = orders.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(orders[4].created_ms, BASE_MS);
        assert_eq!(orders[0].created_ms, BASE_MS - 4 * SPACING_MS);
    }

    #[test]
    fn status_mix_is_skewed_to_history() {
        let orders = generate(5000, 42);
        let count = |s: Status| orders.iter().filter(|o| o.status == s).count();
        assert!((2300..3200).contains(&count(Status::Delivered)));
        assert!((100..400).contains(&count(Status::Submitted)));
        assert!((200..550).contains(&count(Status::ManufacturingApproved)));
        for s in Status::ALL {
            assert!(count(s) > 0, "{s:?} missing");
        }
    }

    #[test]
    fn order_json_has_the_documented_shape_and_size() {
        for order in generate(300, 42) {
            let json = order.to_json();
            assert!((300..=500).contains(&json.len()), "{} bytes", json.len());
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(v["number"], order_number(order.id));
            assert_eq!(v["status"], order.status.as_str());
            assert_eq!(v["price"].is_null(), order.status == Status::Submitted);
            assert_eq!(v["model_hash"].as_str().map(str::len), Some(64));
        }
    }

    #[test]
    fn price_is_deterministic_and_depends_on_inputs() {
        let p = price("abc", "Brass CW614N", 10);
        assert_eq!(p, price("abc", "Brass CW614N", 10));
        assert_ne!(p, price("abc", "Brass CW614N", 11));
        assert_ne!(p, price("abd", "Brass CW614N", 10));
        assert_ne!(p, price("abc", "PEEK natural", 10));
        assert_eq!((p * 100.0).round() / 100.0, p);
        assert!(price("x", "y", u32::MAX).is_finite());
    }
}
