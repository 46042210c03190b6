"""Finding TLS libraries and the functions to hook in them."""
