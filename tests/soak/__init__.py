"""The soak test: a bounded run of many mixed clients against one server, counted to the byte."""
