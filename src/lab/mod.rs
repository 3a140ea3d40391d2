//! The cross-region lab (issue 14, in progress): network pieces that let one machine play
//! two regions, a witness and clients: network namespaces per site ([`netns`]) and the WAN
//! between them ([`wan`]).

pub mod netns;
pub mod wan;
