"""Services: the only layer that checks permissions and changes data. No ``request`` here."""
