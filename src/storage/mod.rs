//! The storage engine seam. Only `rocks.rs` knows RocksDB; everything above sees
//! [`Engine`], [`WriteBatch`], [`ReadView`] and [`Cursor`], and one opaque [`Error`].

mod rocks;
pub mod schema;

pub use rocks::{Engine, RocksCursor, Snapshot, WriteBatch};
pub use schema::Cf;

/// A storage failure. RocksDB's detail is kept as text: callers never match on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Engine(String),
    #[error("storage: corrupt record in {cf}: {what}")]
    Corrupt { cf: &'static str, what: String },
}

impl Error {
    pub fn corrupt(cf: Cf, what: impl Into<String>) -> Self {
        Error::Corrupt {
            cf: cf.name(),
            what: what.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A positioned iterator over one column family, in key order.
pub trait Cursor {
    fn seek(&mut self, key: &[u8]);
    fn seek_to_last(&mut self);
    fn next(&mut self);
    fn valid(&self) -> bool;
    /// Only meaningful while `valid()`.
    fn key(&self) -> &[u8];
    /// Only meaningful while `valid()`.
    fn value(&self) -> &[u8];
    /// Why iteration stopped, if it stopped on an error rather than the end.
    fn status(&self) -> Result<()>;
}

/// A consistent view for reads: either the latest data or a point-in-time snapshot.
pub trait ReadView {
    type Cursor<'a>: Cursor
    where
        Self: 'a;
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn cursor(&self, cf: Cf) -> Self::Cursor<'_>;
    /// A cursor over the entries sharing its first seek key's prefix: in `kv`, one user
    /// key's versions (other families have no prefix: there it is `cursor`). Lookups of one
    /// key use it so that RocksDB's prefix bloom filters skip what cannot hold the key.
    fn key_cursor(&self, cf: Cf) -> Self::Cursor<'_>;
}
