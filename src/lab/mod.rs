//! The cross-region lab (issue 14, in progress): network pieces that let one machine play
//! two regions, a witness and clients. So far the WAN between sites ([`wan`]).

pub mod wan;
