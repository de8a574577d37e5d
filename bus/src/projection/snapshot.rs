//! Snapshots of projections in the `CHOREO_SNAPSHOTS` key-value bucket.
//!
//! A snapshot can outgrow one NATS message (1 MB by default), so it is stored as chunks under
//! `<ns>.<projection>.<generation>.<n>` and committed by writing its manifest under
//! `<ns>.<projection>` last. A reader follows the manifest, so it never sees half a snapshot;
//! a save that dies half-way leaves the previous snapshot in force. Old chunks are deleted
//! after the new manifest is written.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Folded, Position, Projection};
use crate::names::Namespace;
use crate::streams::snapshot_bucket;

/// The key-value bucket that holds projection snapshots.
pub const SNAPSHOT_BUCKET: &str = "CHOREO_SNAPSHOTS";

/// Comfortably under the server's default 1 MB max payload.
const CHUNK_BYTES: usize = 512 * 1024;

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot bucket {SNAPSHOT_BUCKET}: {detail}")]
    Unavailable { detail: String },
    #[error(
        "snapshot {key} is unreadable ({detail}); rebuild without it (`--no-snapshot`) and save \
         a new one"
    )]
    Corrupt { key: String, detail: String },
}

impl SnapshotError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SnapshotError::Unavailable { .. })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    position: Position,
    generation: u64,
    chunks: u64,
    bytes: u64,
}

/// Loads and saves snapshots for one namespace.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    jetstream: jetstream::Context,
    namespace: Namespace,
}

impl SnapshotStore {
    pub fn new(jetstream: jetstream::Context, namespace: Namespace) -> Self {
        SnapshotStore {
            jetstream,
            namespace,
        }
    }

    fn key<P: Projection>(&self) -> String {
        format!("{}.{}", self.namespace, P::NAME)
    }

    fn chunk_key<P: Projection>(&self, generation: u64, index: u64) -> String {
        format!("{}.{generation}.{index}", self.key::<P>())
    }

    async fn bucket(&self) -> Result<kv::Store, SnapshotError> {
        if let Ok(store) = self.jetstream.get_key_value(SNAPSHOT_BUCKET).await {
            return Ok(store);
        }
        // Made here only when `choreo streams ensure` did not make it: as many copies as the
        // events stream has, so a cluster's snapshots survive what its events survive.
        let replicas = match self
            .jetstream
            .get_stream(self.namespace.stream_name())
            .await
        {
            Ok(events) => events.cached_info().config.num_replicas.max(1),
            Err(_) => 1,
        };
        self.jetstream
            .create_key_value(snapshot_bucket(replicas))
            .await
            .map_err(unavailable)
    }

    /// The saved snapshot of `P`, if there is one.
    pub async fn load<P: Projection>(&self) -> Result<Option<Folded<P>>, SnapshotError> {
        let bucket = self.bucket().await?;
        let key = self.key::<P>();
        let Some(manifest) = bucket.get(&key).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let corrupt = |detail: String| SnapshotError::Corrupt {
            key: key.clone(),
            detail,
        };
        let manifest: Manifest =
            serde_json::from_slice(&manifest).map_err(|err| corrupt(err.to_string()))?;
        let mut bytes = Vec::with_capacity(usize::try_from(manifest.bytes).unwrap_or(0));
        for index in 0..manifest.chunks {
            let chunk = bucket
                .get(self.chunk_key::<P>(manifest.generation, index))
                .await
                .map_err(unavailable)?
                .ok_or_else(|| corrupt(format!("chunk {index} is missing")))?;
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != manifest.bytes {
            return Err(corrupt(format!(
                "{} bytes where the manifest says {}",
                bytes.len(),
                manifest.bytes
            )));
        }
        let mut folded: Folded<P> =
            serde_json::from_slice(&bytes).map_err(|err| corrupt(err.to_string()))?;
        folded.position = manifest.position;
        Ok(Some(folded))
    }

    /// Saves `folded` as the snapshot of `P`.
    pub async fn save<P: Projection>(&self, folded: &Folded<P>) -> Result<(), SnapshotError> {
        let bucket = self.bucket().await?;
        let key = self.key::<P>();
        let bytes = serde_json::to_vec(folded).map_err(|err| SnapshotError::Corrupt {
            key: key.clone(),
            detail: err.to_string(),
        })?;
        let previous: Option<Manifest> = bucket
            .get(&key)
            .await
            .map_err(unavailable)?
            .and_then(|value| serde_json::from_slice(&value).ok());
        // A fresh generation per save: the chunks of the snapshot in force are never touched.
        let generation = previous.as_ref().map_or(1, |m| m.generation + 1);
        let mut chunks = 0;
        for chunk in bytes.chunks(CHUNK_BYTES) {
            bucket
                .put(
                    self.chunk_key::<P>(generation, chunks),
                    Bytes::copy_from_slice(chunk),
                )
                .await
                .map_err(unavailable)?;
            chunks += 1;
        }
        let manifest = Manifest {
            position: folded.position,
            generation,
            chunks,
            bytes: bytes.len() as u64,
        };
        let manifest = serde_json::to_vec(&manifest).map_err(|err| SnapshotError::Corrupt {
            key: key.clone(),
            detail: err.to_string(),
        })?;
        bucket
            .put(&key, manifest.into())
            .await
            .map_err(unavailable)?;
        if let Some(previous) = previous {
            for index in 0..previous.chunks {
                // Best effort: a leftover chunk is garbage, not a wrong answer.
                let _ = bucket
                    .purge(self.chunk_key::<P>(previous.generation, index))
                    .await;
            }
        }
        Ok(())
    }
}

fn unavailable(err: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Unavailable {
        detail: err.to_string(),
    }
}
