//! What DESIGN §6–7 promise about delivery and the API, each checked end to end on both
//! backends against a real local receiver.
