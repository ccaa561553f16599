//! The codec of every Engram gRPC service and client: prost, except that each message's
//! buffer space is reserved at once.
//!
//! tonic starts each response in an 8 KiB buffer and prost grows it as it writes, doubling
//! and copying: a 500-object list page (~500 KiB) was reallocated seven times, copied ~1 MiB
//! on the way and held a 1 MiB buffer until the transport had sent it. Reserving the message's
//! `encoded_len()` first copies each byte once and holds only what is sent. The bytes on the
//! wire are prost's either way.

use bytes::BufMut;
use prost::Message;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};

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
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> SizedEncoder<T> {
        SizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
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
