# Production image: Node 24 runs the TypeScript sources directly (type stripping); no build step.
FROM node:24-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY db ./db
COPY migrations ./migrations
COPY scripts ./scripts
COPY src ./src
COPY worker ./worker
COPY .gmrc schema.graphql ./
USER node
EXPOSE 4000
ENV HOST=0.0.0.0 PORT=4000
HEALTHCHECK --interval=15s --timeout=3s CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||4000)+'/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["node", "-r", "./scripts/require-node.cjs", "--disable-warning=ExperimentalWarning", "src/cli/start.ts"]
