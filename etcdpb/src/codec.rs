//! The codec of every Engram gRPC service and client: prost, except that each message's
//! buffer space is reserved at once.
//!
//! tonic starts each response in an 8 KiB buffer and prost grows it as it writes, doubling
//! and copying: a 500-object list page (~500 KiB) was reallocated seven times, copied ~1 MiB
//! on the way and held a 1 MiB buffer until the transport had sent it. Reserving the message's
//! `encoded_len()` first copies each byte once and holds only what is sent. The bytes on the
//! wire are prost's either way.
//!
//! Decoding is prost's without its recursion limit (100 nested messages, which cut txns off at
//! 50 levels where etcd takes 128): the one recursive request, `TxnRequest`, is checked for
//! depth first (see [`txn_depth`]), so no request can nest deeper than etcd allows.

use crate::etcdserverpb::TxnRequest;
use bytes::{Buf, BufMut};
use prost::Message;
use std::any::TypeId;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Deepest nesting of txns etcd accepts: each level takes at least one op from its parent's
/// budget of `--max-txn-ops` (128), so the 129th level is refused.
pub const MAX_TXN_DEPTH: usize = 128;

/// A prost codec that sizes each encoded message's buffer before writing it.
#[derive(Debug)]
pub struct SizedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SizedCodec<T, U> {
    fn default() -> Self {
        SizedCodec(PhantomData)
    }
}

impl<T, U> Codec for SizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = DepthCheckedDecoder<U>;

    fn encoder(&mut self) -> SizedEncoder<T> {
        SizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        DepthCheckedDecoder(PhantomData)
    }
}

/// Decodes a prost message; a `TxnRequest` nested deeper than etcd allows is refused with
/// etcd's error before it is decoded.
#[derive(Debug)]
pub struct DepthCheckedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + 'static> Decoder for DepthCheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() == TypeId::of::<TxnRequest>() && txn_depth(buf.chunk()) > MAX_TXN_DEPTH
        {
            buf.advance(buf.remaining());
            return Err(Status::invalid_argument(
                "etcdserver: too many operations in txn request",
            ));
        }
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("grpc: error unmarshalling request: {e}")))
    }
}

/// How deep the txns of an encoded `TxnRequest` nest (1: no nested txn), read off the wire
/// without recursion and without decoding anything else; it stops counting past
/// [`MAX_TXN_DEPTH`]. Malformed bytes end the count where they start (prost then refuses them).
pub fn txn_depth(bytes: &[u8]) -> usize {
    // TxnRequest: success = 2, failure = 3 (RequestOp); RequestOp: request_txn = 4.
    let mut deepest = 1;
    let mut pending = vec![(bytes, 1usize)];
    while let Some((txn, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        if deepest > MAX_TXN_DEPTH {
            break;
        }
        for (field, op) in fields(txn) {
            if field == 2 || field == 3 {
                for (field, inner) in fields(op) {
                    if field == 4 {
                        pending.push((inner, depth + 1));
                    }
                }
            }
        }
    }
    deepest
}

/// The length-delimited fields of an encoded message: (field number, payload); other fields
/// are skipped.
fn fields(mut bytes: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || {
        loop {
            let key = prost::encoding::decode_varint(&mut bytes).ok()?;
            let field = (key >> 3) as u32;
            match key & 7 {
                0 => {
                    prost::encoding::decode_varint(&mut bytes).ok()?;
                }
                1 => bytes = bytes.get(8..)?,
                5 => bytes = bytes.get(4..)?,
                2 => {
                    let len =
                        usize::try_from(prost::encoding::decode_varint(&mut bytes).ok()?).ok()?;
                    let payload = bytes.get(..len)?;
                    bytes = &bytes[len..];
                    return Some((field, payload));
                }
                _ => return None,
            }
        }
    })
}

/// Encodes a prost message into a buffer reserved to its exact size.
#[derive(Debug)]
pub struct SizedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        encode_sized(&item, buf);
        Ok(())
    }
}

/// A buffer that can make room for a known number of bytes in one step.
trait Reserve: BufMut {
    fn reserve_exact(&mut self, additional: usize);
}

impl Reserve for EncodeBuf<'_> {
    fn reserve_exact(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

#[cfg(test)]
impl Reserve for bytes::BytesMut {
    fn reserve_exact(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

fn encode_sized<T: Message>(item: &T, buf: &mut impl Reserve) {
    buf.reserve_exact(item.encoded_len());
    // Not `encode`: it would compute the length again to check the space reserved just now.
    item.encode_raw(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::RangeResponse;
    use crate::mvccpb::KeyValue;
    use bytes::{Bytes, BytesMut};

    fn page(n: usize) -> RangeResponse {
        RangeResponse {
            kvs: (0..n)
                .map(|i| KeyValue {
                    key: Bytes::from(format!("/registry/pods/default/pod-{i}")),
                    value: Bytes::from(vec![b'v'; 1024]),
                    mod_revision: i as i64 + 2,
                    create_revision: 2,
                    version: 1,
                    lease: 0,
                })
                .collect(),
            more: true,
            count: 10_000,
            header: None,
        }
    }

    fn nested(depth: usize) -> crate::etcdserverpb::TxnRequest {
        use crate::etcdserverpb::{RequestOp, TxnRequest, request_op::Request};
        let mut txn = TxnRequest::default();
        for _ in 1..depth {
            txn = TxnRequest {
                success: vec![RequestOp {
                    request: Some(Request::RequestTxn(txn)),
                }],
                ..Default::default()
            };
        }
        txn
    }

    #[test]
    fn txn_depth_is_read_off_the_wire() {
        for depth in [1, 2, 50, 128] {
            assert_eq!(txn_depth(&nested(depth).encode_to_vec()), depth);
        }
        assert!(txn_depth(&nested(129).encode_to_vec()) > MAX_TXN_DEPTH);
        // Thousands deep (built as bytes: a message that deep would overflow the stack being
        // encoded or dropped, as it would being decoded): counted without recursion.
        let mut wire = Vec::new();
        for _ in 0..3000 {
            let mut op = vec![0x22];
            prost::encoding::encode_varint(wire.len() as u64, &mut op);
            op.extend_from_slice(&wire);
            wire = vec![0x12];
            prost::encoding::encode_varint(op.len() as u64, &mut wire);
            wire.extend_from_slice(&op);
        }
        assert!(txn_depth(&wire) > MAX_TXN_DEPTH);
        // Garbage is not counted.
        assert_eq!(txn_depth(b"\xff\xff\xff"), 1);
        // Decoding 128 levels works (prost alone stops at 50).
        let deep = nested(128);
        assert_eq!(
            crate::etcdserverpb::TxnRequest::decode(&deep.encode_to_vec()[..]).unwrap(),
            deep
        );
    }

    #[test]
    fn encodes_prosts_bytes_into_a_buffer_of_their_size() {
        let resp = page(500);
        let expected = resp.encode_to_vec();
        // tonic's starting size, with its 5-byte frame header written: the page is far larger.
        let mut buf = BytesMut::with_capacity(8 * 1024);
        buf.put_slice(&[0; 5]);
        encode_sized(&resp, &mut buf);
        assert_eq!(&buf[5..], &expected[..]);
        assert_eq!(
            buf.capacity(),
            5 + expected.len(),
            "one reservation, no doubling"
        );
        assert_eq!(RangeResponse::decode(&buf[5..]).unwrap(), resp);
    }
}
