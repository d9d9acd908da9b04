"""HTML pages for people: the confirm page a mail link opens."""
