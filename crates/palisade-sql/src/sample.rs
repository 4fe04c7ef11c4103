//! The sample schema and data `migrate` loads: customers and their orders, the same shape for
//! PostgreSQL and SQLite, generated (not random) so tests and benchmarks can count on it.
//!
//! Every row carries `tenant_id`; in PostgreSQL that column is what row-level security
//! filters on, in SQLite it only tells a reader whose file a row came from.

/// Orders per tenant: enough for a 100-row result.
pub const ORDERS_PER_TENANT: i64 = 150;
/// Customers per tenant.
pub const CUSTOMERS_PER_TENANT: i64 = 10;

pub struct Customer {
    pub id: i64,
    pub name: String,
    pub email: String,
}

pub struct Order {
    pub id: i64,
    pub customer_id: i64,
    pub item: &'static str,
    pub amount_cents: i64,
    pub created_at: String,
}

const ITEMS: [&str; 6] = [
    "anvil",
    "rocket skates",
    "tornado seeds",
    "hammock",
    "magnet",
    "paint",
];

/// `acme` → `Acme`: customer names and e-mail domains say whose they are, which makes a leak
/// obvious in a test's failure message.
fn title(tenant: &str) -> String {
    let mut chars = tenant.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

pub fn customers(tenant: &str) -> Vec<Customer> {
    (1..=CUSTOMERS_PER_TENANT)
        .map(|id| Customer {
            id,
            name: format!("{} customer {id}", title(tenant)),
            email: format!("buyer{id}@{tenant}.example"),
        })
        .collect()
}

pub fn orders(tenant: &str) -> Vec<Order> {
    // Different amounts per tenant, so sums differ.
    let salt: i64 = tenant.bytes().map(i64::from).sum();
    (1..=ORDERS_PER_TENANT)
        .map(|id| Order {
            id,
            customer_id: 1 + id % CUSTOMERS_PER_TENANT,
            item: ITEMS[(id as usize) % ITEMS.len()],
            amount_cents: 100 + (id * 7919 + salt) % 10_000,
            created_at: format!("2026-{:02}-{:02}T12:00:00Z", 1 + id % 12, 1 + id % 28),
        })
        .collect()
}

/// The tables, for both databases (the types are the common subset).
pub const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS customers (
        tenant_id TEXT NOT NULL,
        id BIGINT NOT NULL,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        PRIMARY KEY (tenant_id, id))",
    "CREATE TABLE IF NOT EXISTS orders (
        tenant_id TEXT NOT NULL,
        id BIGINT NOT NULL,
        customer_id BIGINT NOT NULL,
        item TEXT NOT NULL,
        amount_cents BIGINT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (tenant_id, id))",
];

/// The tables that hold tenant rows (row-level security applies to each).
pub const TENANT_TABLES: [&str; 2] = ["customers", "orders"];
