"""Services: the only layer that checks permissions and changes data. No ``request`` here."""

# Keep the search index in step with every session that changes subjects, consents, visits,
# series or metrics (installs SQLAlchemy session hooks; see search_index).
from repository.services import search_index as _search_index  # noqa: E402, F401
