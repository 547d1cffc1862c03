"""The runner protocol: the wire types the server and the runner process exchange
(``wire``). Both sides import it; it imports only the memory model."""
