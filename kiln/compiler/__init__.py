"""kiln.compiler"""
