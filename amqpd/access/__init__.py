"""Access control: users, virtual hosts, permissions and password hashes. Pure data and
rules; the protocol layer asks it, the store keeps what must survive a restart."""
