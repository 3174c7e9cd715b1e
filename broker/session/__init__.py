"""Sessions: creating them, the SDP offer, ending them, and the deadlines that end them."""
