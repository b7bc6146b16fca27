//! The native protocol codec, both ways. The first byte picks a side:
//! - even: the rest is what a client sent the broker, taken frame by frame as the broker's
//!   connection loop does (`check`, `split_request`, `Request::decode`); a request that decodes
//!   must encode back to the same request.
//! - odd: the rest is what a server sent a client (`check`, `split_server`, then
//!   `Response::decode` for the request kind picked by the first byte's other bits, or
//!   `Push::decode`).

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use strand_client::native::frame::{self, REQUEST_HEADER_BYTES, SERVER_HEADER_BYTES};
use strand_client::native::messages::ApiKey;
use strand_client::native::{Push, Request, Response, ServerFrameKind, FRAME_BYTES_MAX_DEFAULT};

fuzz_target!(|data: &[u8]| {
    let Some((&side, stream)) = data.split_first() else {
        return;
    };
    if side & 1 == 0 {
        client_to_broker(stream);
    } else {
        let n_keys = ApiKey::ALL.len();
        let key = ApiKey::ALL[usize::from(side >> 1) % n_keys];
        server_to_client(key, stream);
    }
});

fn client_to_broker(mut stream: &[u8]) {
    loop {
        let len = match frame::check(stream, FRAME_BYTES_MAX_DEFAULT, REQUEST_HEADER_BYTES) {
            Ok(Some(len)) => len,
            Ok(None) | Err(_) => return,
        };
        let (header, body) = frame::split_request(Bytes::copy_from_slice(&stream[..len]));
        stream = &stream[len..];
        match Request::decode(&header, body) {
            Ok(request) => {
                let mut buf = BytesMut::new();
                request.encode(header.correlation_id, &mut buf);
                let again = frame::check(&buf, usize::MAX, REQUEST_HEADER_BYTES)
                    .expect("an encoded request frames")
                    .expect("an encoded request is whole");
                assert_eq!(again, buf.len());
                let (header_again, body_again) = frame::split_request(buf.freeze());
                assert_eq!(header_again, header);
                let decoded =
                    Request::decode(&header_again, body_again).expect("an encoded request decodes");
                assert_eq!(decoded, request);
            }
            Err(e) => {
                // What the broker answers an undecodable request with.
                let mut buf = BytesMut::new();
                Response::error(e.code(), e.to_string()).encode(header.correlation_id, &mut buf);
            }
        }
    }
}

fn server_to_client(key: ApiKey, mut stream: &[u8]) {
    loop {
        let len = match frame::check(stream, FRAME_BYTES_MAX_DEFAULT, SERVER_HEADER_BYTES) {
            Ok(Some(len)) => len,
            Ok(None) | Err(_) => return,
        };
        let frame = Bytes::copy_from_slice(&stream[..len]);
        stream = &stream[len..];
        let Ok((header, body)) = frame::split_server(frame) else {
            return;
        };
        match header.kind {
            ServerFrameKind::Push => {
                if let Ok(push) = Push::decode(body) {
                    let mut buf = BytesMut::new();
                    push.encode(header.correlation_id, &mut buf);
                }
            }
            ServerFrameKind::Response => {
                if let Ok(response) = Response::decode(key, body) {
                    let mut buf = BytesMut::new();
                    response.encode(header.correlation_id, &mut buf);
                    let (header_again, body_again) =
                        frame::split_server(buf.freeze()).expect("an encoded response splits");
                    assert_eq!(header_again, header);
                    let decoded =
                        Response::decode(key, body_again).expect("an encoded response decodes");
                    assert_eq!(decoded, response);
                }
            }
        }
    }
}
